//! KairosDB `multi` mode: splitting a query by backend and merging the answers.
//!
//! Input: the client's query (JSON), then a NUL, then the raw answer of the first backend;
//! the other backends answer well. Metrics go to one of three backends by the first byte of
//! their name. No panic; every sub-query carries exactly its group's metrics, in order; the
//! merged answer has one entry per requested metric, each well-answered one in place.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use weir_dataplane::kairos::{answer_queries, merge, metric_names, sub_query};

fuzz_target!(|data: &[u8]| {
    let (query, first_answer) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(query) = serde_json::from_slice::<Value>(query) else {
        return;
    };
    let Some(names) = metric_names(&query) else {
        return;
    };
    let mut groups: Vec<(u8, Vec<usize>)> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let backend = n.bytes().next().unwrap_or(0) % 3;
        match groups.iter_mut().find(|(b, _)| *b == backend) {
            Some((_, v)) => v.push(i),
            None => groups.push((backend, vec![i])),
        }
    }
    let mut results = Vec::new();
    for (g, (_, idx)) in groups.iter().enumerate() {
        let sub: Value =
            serde_json::from_slice(&sub_query(&query, idx)).expect("sub-query is JSON");
        let sub_names = metric_names(&sub).expect("sub-query has metrics[].name");
        let want: Vec<&String> = idx.iter().map(|i| &names[*i]).collect();
        assert_eq!(sub_names.iter().collect::<Vec<_>>(), want);
        let answer = if g == 0 {
            first_answer.to_vec()
        } else {
            let queries: Vec<Value> = sub_names
                .iter()
                .map(|n| json!({"sample_size": 1, "results": [{"name": n, "values": [[1, 2]]}]}))
                .collect();
            serde_json::to_vec(&json!({ "queries": queries })).expect("answer")
        };
        results.push(answer_queries(&answer, idx.len()));
    }
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    let idxs: Vec<Vec<usize>> = groups.iter().map(|(_, v)| v.clone()).collect();
    let merged = merge(&names, &idxs, results);
    assert_eq!(merged.queries.len(), names.len());
    assert_eq!(merged.errors.len(), ok.iter().filter(|o| !**o).count());
    for ((g, idx), ok) in idxs.iter().enumerate().zip(ok) {
        for i in idx {
            // The first backend's own answers are put in place as they came (even `null`);
            // the others' (and a failed group's empty results) name their metric.
            if g > 0 || !ok {
                let q = &merged.queries[*i];
                assert_eq!(q["results"][0]["name"].as_str(), Some(names[*i].as_str()));
            }
        }
    }
});
