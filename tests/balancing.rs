//! The load-aware balancers end to end: `least_traffic` and `peak_ewma` in the real proxy
//! in front of real origins, where the other balancers would split the same requests
//! evenly.

mod common;

use common::http::{self as h, runtime};
use common::proxy_world::{post, tally, world, Opts};

#[test]
fn least_traffic_sends_requests_away_from_the_origin_that_just_moved_a_lot() {
    let rt = runtime();
    let w = world(Opts {
        upstream: "balance = \"least_traffic\"".into(),
        ..Opts::default()
    });
    rt.block_on(async {
        // One 4 MB answer goes to one origin; the next small requests, one at a time
        // (least_conn would see two idle origins and split them), go to the other.
        let big = h::get(w.http(), "www.example.test", "/big?size=4000000")
            .await
            .unwrap();
        assert_eq!(big.body.len(), 4_000_000);
        let heavy = big.origin();
        let mut replies = Vec::new();
        for _ in 0..20 {
            replies.push(h::get(w.http(), "www.example.test", "/").await.unwrap());
        }
        let t = tally(&replies);
        assert_eq!(
            t.get(&heavy).copied().unwrap_or(0),
            0,
            "heavy {heavy}: {t:?}"
        );
    });
    // /status shows what each origin moved.
    let (code, body) = common::http_get(w.admin(), "/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let web = &status["upstreams"][0];
    assert_eq!(web["balance"], "least_traffic");
    let bytes: u64 = web["origins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["bytes"].as_u64().unwrap())
        .sum();
    assert!(bytes >= 4_000_000, "{web}");
}

#[test]
fn peak_ewma_learns_which_origin_is_slow() {
    let rt = runtime();
    let w = world(Opts {
        upstream: "balance = \"peak_ewma\"".into(),
        ..Opts::default()
    });
    rt.block_on(async {
        post(w.origins.addrs[0], "/_origin/delay?ms=150").await;
        // One request at a time: in-flight counts are always 0, so only the measured
        // latency tells the origins apart. Each origin is measured once it is picked,
        // after which the 1 ms one wins every draw of two.
        let mut replies = Vec::new();
        for _ in 0..30 {
            replies.push(h::get(w.http(), "www.example.test", "/").await.unwrap());
        }
        let t = tally(&replies);
        let slow = t.get("o1").copied().unwrap_or(0);
        assert!(
            slow <= 3,
            "the slow origin should be picked only until measured: {t:?}"
        );
    });
    let (_, body) = common::http_get(w.admin(), "/status");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let o1 = &status["upstreams"][0]["origins"][0];
    assert!(
        o1["latency_ms"].as_f64().unwrap() > 100.0,
        "o1's EWMA shows its delay: {o1}"
    );
}
