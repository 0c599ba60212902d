//! `surge bench simulate` end to end: the shipped spiky trace through every policy over
//! the fixture capacity report, checking the invariants any correct replay keeps.

use std::path::PathBuf;

use clap::Parser;
use surge::bench::simulate::{self, SimReport, SimulateArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Flags for the spiky trace and the fixture report, plus `extra`.
fn args(extra: &[&str]) -> SimulateArgs {
    let trace = root().join("bench/traces/spiky.csv");
    let capacity = root().join("tests/fixtures/bench_simulate/capacity.json");
    let mut argv = vec![
        "simulate".to_string(),
        "--trace".to_string(),
        trace.display().to_string(),
        "--capacity".to_string(),
        capacity.display().to_string(),
        "--cold-start".to_string(),
        "20s".to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Cli::parse_from(argv).args
}

/// The invariants of one report run with `min`/`max` replicas.
fn check_invariants(report: &SimReport, min: u32, max: u32) {
    assert_eq!(report.policies.len(), 3);
    assert!(report.num_requests > 3000, "{}", report.num_requests);
    for p in &report.policies {
        let name = &p.name;
        // Every request is served or counted as dropped, exactly once.
        assert_eq!(p.requests.total, report.num_requests, "{name}");
        assert_eq!(
            p.requests.served + p.num_dropped(),
            p.requests.total,
            "{name}: served and dropped do not add up"
        );
        // Replicas within the bounds; never more ready than asked for.
        assert!(!p.replicas.series.is_empty(), "{name}");
        for point in &p.replicas.series {
            let [t, spec, ready, pods] = *point;
            assert!(
                (f64::from(min)..=f64::from(max)).contains(&spec),
                "{name}: {spec} replicas at {t} s"
            );
            assert!(ready <= spec && spec <= pods, "{name} at {t} s: {point:?}");
        }
        assert!(p.replicas.min >= min && p.replicas.max <= max, "{name}");
        // GPU-seconds cover every ready replica's time (and cold starts on top).
        let series = &p.replicas.series;
        let mut ready_integral = 0.0;
        for w in series.windows(2) {
            ready_integral += w[0][2] * (w[1][0] - w[0][0]);
        }
        assert!(
            p.gpu_seconds + 0.01 >= ready_integral,
            "{name}: {} GPU-s < {ready_integral} ready replica-s",
            p.gpu_seconds
        );
        assert!(p.gpu_seconds + 0.01 >= p.ready_replica_seconds, "{name}");
        assert!((0.0..=1.0).contains(&p.slo_attainment), "{name}");
        let q = &p.queue_delay_s;
        assert!(q.p50 <= q.p90 && q.p90 <= q.p99, "{name}: {q:?}");
        // The bursts are several replicas' worth: every policy scales out.
        assert!(
            p.replicas.max > p.replicas.min.max(1),
            "{name} never scaled out"
        );
    }
}

#[test]
fn spiky_trace_keeps_the_invariants_and_replays_deterministically() {
    let args = args(&[]);
    let first = simulate::simulate_all(&args).unwrap();
    check_invariants(&first, 1, 8);
    let second = simulate::simulate_all(&args).unwrap();
    assert_eq!(
        serde_json::to_string(&first).unwrap(),
        serde_json::to_string(&second).unwrap(),
        "two replays differ"
    );
    // The table names every policy.
    let table = first.table();
    for name in ["kpa", "keda-queue", "keda-saturation"] {
        assert!(table.contains(name), "{table}");
    }
}

#[test]
fn scale_to_zero_in_the_silence_and_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sim.json");
    let out_arg = out.display().to_string();
    let args = args(&[
        "--min-replicas",
        "0",
        "--max-replicas",
        "6",
        "--slo-e2e",
        "30s",
        "--output",
        &out_arg,
    ]);
    simulate::run(&args).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let report = simulate::simulate_all(&args).unwrap();
    assert_eq!(json, serde_json::to_value(&report).unwrap());
    check_invariants(&report, 0, 6);
    // The trace is silent from 1500 s to 1700 s: the KPA (60 s window + 30 s grace)
    // reaches zero there, and its activator wakes it for the requests after.
    let kpa = &report.policies[0];
    assert_eq!(kpa.name, "kpa");
    let zero = kpa
        .replicas
        .series
        .iter()
        .find(|p| p[1] == 0.0)
        .expect("the KPA never scaled to zero");
    assert!((1500.0..1700.0).contains(&zero[0]), "zero at {} s", zero[0]);
    assert_eq!(kpa.num_dropped(), 0);
    // KEDA on surge_saturation: the trigger is active whenever a request is in flight,
    // and the cooldown (300 s) is longer than the silence, so it never reaches zero.
    let saturation = &report.policies[2];
    assert_eq!(saturation.name, "keda-saturation");
    assert!(
        saturation.replicas.min >= 1,
        "keda-saturation scaled to zero"
    );
    // KEDA on vllm:num_requests_waiting: the trigger reads 0 whenever no queue has
    // formed, so it scales to zero after the cooldown while requests still arrive
    // (the limit deploy/kserve/isvc-standard-keda-waiting.yaml warns about).
    let queue = &report.policies[1];
    assert_eq!(queue.name, "keda-queue");
    let zero = queue
        .replicas
        .series
        .iter()
        .find(|p| p[1] == 0.0)
        .expect("keda-queue never scaled to zero");
    assert!(
        zero[0] < 1500.0,
        "keda-queue reached zero only at {} s",
        zero[0]
    );
}

#[test]
fn rejects_bad_bounds() {
    let err = simulate::simulate_all(&args(&["--max-replicas", "0"])).unwrap_err();
    assert!(err.to_string().contains("--max-replicas"), "{err}");
}
