//! Names in config files: domain names made absolute under a zone's origin, and the
//! labels that name regions and nodes (which also appear in metrics and DNS names).

use hickory_proto::rr::Name;

/// `text` as an absolute name: as written when it ends in a dot, else under `origin` (or
/// the root).
pub(super) fn parse_fqdn(text: &str, origin: Option<&Name>) -> Result<Name, String> {
    let name = Name::from_ascii(text).map_err(|e| format!("`{text}` is not a domain name: {e}"))?;
    if name.is_fqdn() {
        return Ok(name);
    }
    match origin {
        Some(origin) => name
            .append_domain(origin)
            .map_err(|e| format!("`{text}` is too long under {origin}: {e}")),
        None => Ok(name
            .append_domain(&Name::root())
            .map_err(|e| e.to_string())?),
    }
}

pub(super) fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_go_under_the_origin_and_absolute_ones_stay() {
        let origin = Name::from_ascii("example.test.").unwrap();
        assert_eq!(
            parse_fqdn("www", Some(&origin)).unwrap().to_string(),
            "www.example.test."
        );
        assert_eq!(
            parse_fqdn("other.test.", Some(&origin))
                .unwrap()
                .to_string(),
            "other.test."
        );
        assert_eq!(
            parse_fqdn("zone.test", None).unwrap().to_string(),
            "zone.test."
        );
        assert!(parse_fqdn("bad..name", None).is_err());
    }

    #[test]
    fn labels_are_one_dns_label_of_safe_characters() {
        assert!(is_label("eu-west_1"));
        assert!(!is_label(""));
        assert!(!is_label("a.b"));
        assert!(!is_label("with space"));
        assert!(!is_label(&"x".repeat(64)));
        assert!(is_label(&"x".repeat(63)));
    }
}
