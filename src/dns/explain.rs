//! Why a client gets the region it gets, told from a DNS server's live `/status`: the
//! ranking for its address, which regions are up, and whether shedding moves it. Pure: the
//! ranking, the status and the client's place in the shedding order come from outside
//! (`geoedge geo lookup --live`).

use crate::dns::admin::RegionStatus;

/// The answer a client gets and the lines that explain it. `ranked`: region names best
/// first; `position`: the client network's place in [0, 1) (`steer::shed::position`).
pub fn explain(
    ranked: &[String],
    live: &[RegionStatus],
    position: f64,
) -> (Option<String>, Vec<String>) {
    let mut lines = Vec::new();
    let find = |name: &str| live.iter().find(|r| r.name == name);
    let describe = |r: &RegionStatus| {
        let load = match (r.utilisation, r.watermarks) {
            (Some(u), Some((low, high))) => {
                format!(
                    "utilisation {u:.2}, watermarks {low:.2}-{high:.2} ({})",
                    r.watermark_state
                )
            }
            (Some(u), None) => format!("utilisation {u:.2}, no watermarks"),
            (None, _) => "no load reported".to_string(),
        };
        format!(
            "{}: {}, {load}, shed share {:.3}",
            r.name,
            if r.up { "up" } else { "down" },
            r.shed_share
        )
    };
    for name in ranked {
        match find(name) {
            Some(r) => lines.push(describe(r)),
            None => lines.push(format!(
                "{name}: not in the server's status (another config?)"
            )),
        }
    }
    let up = |name: &str| find(name).is_some_and(|r| r.up);
    let Some(home) = ranked.iter().find(|n| up(n)) else {
        lines.push("no region is up: the all-down policy answers".to_string());
        return (None, lines);
    };
    let share = find(home).map(|r| r.shed_share).unwrap_or(0.0);
    if share <= 0.0 || position >= share {
        lines.push(format!(
            "answer: {home}, the nearest region up (this network's place in the shedding order is {position:.3}, {home} sheds below {share:.3})"
        ));
        return (Some(home.clone()), lines);
    }
    let has_room = |name: &str| find(name).is_some_and(|r| r.watermark_state != "above_high");
    match ranked.iter().find(|n| *n != home && up(n) && has_room(n)) {
        Some(other) => {
            lines.push(format!(
                "answer: {other}, shed from {home}: this network's place {position:.3} is below {home}'s shed share {share:.3}, and {other} is the nearest other region up with room"
            ));
            (Some(other.clone()), lines)
        }
        None => {
            lines.push(format!(
                "answer: {home}: it sheds this network (place {position:.3} < share {share:.3}), but every other region is down or above its high watermark, so the nearest order stands"
            ));
            (Some(home.clone()), lines)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, up: bool, u: f64, share: f64, state: &str) -> RegionStatus {
        RegionStatus {
            name: name.into(),
            up,
            utilisation: Some(u),
            shed_share: share,
            watermark_state: state.into(),
            watermarks: Some((0.5, 0.9)),
            smoothed_utilisation: Some(u),
            demand: None,
            shed_target: None,
            nodes: vec![],
        }
    }

    fn ranked() -> Vec<String> {
        vec!["eu".into(), "us".into(), "ap".into()]
    }

    #[test]
    fn a_network_inside_the_share_is_sent_to_the_next_region_with_room() {
        let live = [
            region("eu", true, 0.77, 0.56, "between"),
            region("us", true, 0.95, 0.0, "above_high"),
            region("ap", true, 0.2, 0.0, "below_low"),
        ];
        let (answer, lines) = explain(&ranked(), &live, 0.31);
        assert_eq!(answer.as_deref(), Some("ap"));
        let last = lines.last().unwrap();
        assert!(
            last.contains("shed from eu") && last.contains("0.310"),
            "{last}"
        );
        assert!(
            lines[0].contains("watermarks 0.50-0.90 (between)"),
            "{lines:?}"
        );
    }

    #[test]
    fn outside_the_share_or_with_nowhere_to_go_the_nearest_region_answers() {
        let live = [
            region("eu", true, 0.77, 0.56, "between"),
            region("us", true, 0.95, 0.0, "above_high"),
            region("ap", false, 0.2, 0.0, "below_low"),
        ];
        assert_eq!(explain(&ranked(), &live, 0.8).0.as_deref(), Some("eu"));
        let (answer, lines) = explain(&ranked(), &live, 0.1);
        assert_eq!(answer.as_deref(), Some("eu"));
        assert!(lines.last().unwrap().contains("nearest order stands"));
        let down = [region("eu", false, 0.0, 0.0, "unknown")];
        assert_eq!(explain(&["eu".into()], &down, 0.1).0, None);
    }
}
