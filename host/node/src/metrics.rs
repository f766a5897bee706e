//! Prometheus metrics: counters and histograms per module version, never
//! per session (a label per session would grow without bound).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram buckets, in seconds: from a fast action to a slow snapshot.
const BUCKETS: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bucket, upper) in self.counts.iter_mut().zip(BUCKETS) {
            if seconds <= upper {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// An extra label, `(name, value)`; `None` for none.
type Label = Option<(&'static str, &'static str)>;

#[derive(Default)]
struct Registry {
    /// (metric, module, extra label as (name, value)) -> value.
    counters: BTreeMap<(&'static str, String, Label), u64>,
    /// (metric, module, extra label) -> histogram.
    histograms: BTreeMap<(&'static str, String, Label), Histogram>,
}

/// The node's metrics.
#[derive(Default)]
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
}

/// Sessions by module and state, counted at scrape time.
pub(crate) struct SessionCounts {
    pub(crate) by_module: BTreeMap<String, (u64, u64)>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn add(&self, metric: &'static str, module: &str, label: Label, by: u64) {
        self.with(|r| {
            *r.counters
                .entry((metric, module.to_owned(), label))
                .or_default() += by
        });
    }

    fn observe(&self, metric: &'static str, module: &str, label: Label, took: Duration) {
        self.with(|r| {
            r.histograms
                .entry((metric, module.to_owned(), label))
                .or_default()
                .observe(took.as_secs_f64())
        });
    }

    /// An action, from arrival to acknowledgement.
    pub(crate) fn action(&self, module: &str, result: &'static str, took: Duration) {
        self.add("baton_actions_total", module, Some(("result", result)), 1);
        self.observe("baton_action_seconds", module, None, took);
    }

    /// Journal entries made durable.
    pub(crate) fn journaled(&self, module: &str, entries: u64, bytes: u64, took: Duration) {
        self.add("baton_journal_entries_total", module, None, entries);
        self.add("baton_journal_bytes_total", module, None, bytes);
        self.observe("baton_journal_commit_seconds", module, None, took);
    }

    /// A snapshot encoded and stored.
    pub(crate) fn snapshot(&self, module: &str, bytes: u64, took: Duration) {
        self.add("baton_snapshots_total", module, None, 1);
        self.add("baton_snapshot_bytes_total", module, None, bytes);
        self.observe("baton_snapshot_seconds", module, None, took);
    }

    /// A snapshot shipped to a session's replica and stored there.
    pub(crate) fn replica_snapshot(
        &self,
        module: &str,
        kind: &'static str,
        bytes: u64,
        took: Duration,
    ) {
        let kind = Some(("kind", kind));
        self.add("baton_replica_snapshots_total", module, kind, 1);
        self.add("baton_replica_snapshot_bytes_total", module, kind, bytes);
        self.observe("baton_replica_snapshot_seconds", module, kind, took);
    }

    /// A handoff target sent a whole snapshot before the fence.
    pub(crate) fn handoff_warmed(&self, module: &str, bytes: u64, took: Duration) {
        self.add("baton_handoff_warm_bytes_total", module, None, bytes);
        self.observe("baton_handoff_warm_seconds", module, None, took);
    }

    /// A session handed over to this node: the time from the fence on the
    /// old owner to the first action applied here, and whether the memory
    /// hash after the restore equals the one at the fence.
    pub(crate) fn handoff_arrived(&self, module: &str, cutover: Duration, exact: Option<bool>) {
        let result = match exact {
            Some(true) => "exact",
            Some(false) => "differs",
            None => "unchecked",
        };
        self.add(
            "baton_handoffs_in_total",
            module,
            Some(("digest", result)),
            1,
        );
        self.observe("baton_handoff_cutover_seconds", module, None, cutover);
    }

    /// A session's upgrade to module `to`: `moved`, `stayed` (the new
    /// version could not take it) or `rolled_back` (it failed on trial).
    pub(crate) fn upgrade(&self, to: &str, result: &'static str) {
        self.add("baton_upgrades_total", to, Some(("result", result)), 1);
    }

    /// A call the rules failed (trap, fuel, memory, output).
    pub(crate) fn rules_failed(&self, module: &str) {
        self.add("baton_rules_failures_total", module, None, 1);
    }

    /// The Prometheus text format.
    pub(crate) fn render(&self, sessions: &SessionCounts, ready: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP baton_build_info The running build.");
        let _ = writeln!(out, "# TYPE baton_build_info gauge");
        let _ = writeln!(
            out,
            "baton_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(out, "# HELP baton_ready Whether /readyz answers ready.");
        let _ = writeln!(out, "# TYPE baton_ready gauge");
        let _ = writeln!(out, "baton_ready {}", u8::from(ready));
        let _ = writeln!(
            out,
            "# HELP baton_sessions Sessions on this node, live or hibernated."
        );
        let _ = writeln!(out, "# TYPE baton_sessions gauge");
        for (module, (live, hibernated)) in &sessions.by_module {
            let _ = writeln!(
                out,
                "baton_sessions{{module=\"{module}\",state=\"live\"}} {live}"
            );
            let _ = writeln!(
                out,
                "baton_sessions{{module=\"{module}\",state=\"hibernated\"}} {hibernated}"
            );
        }
        self.with(|r| {
            let mut last = "";
            for ((metric, module, label), value) in &r.counters {
                if *metric != last {
                    let _ = writeln!(out, "# TYPE {metric} counter");
                    last = metric;
                }
                let _ = writeln!(out, "{metric}{{{}}} {value}", labels(module, label));
            }
            let mut last = "";
            for ((metric, module, label), h) in &r.histograms {
                if *metric != last {
                    let _ = writeln!(out, "# TYPE {metric} histogram");
                    last = metric;
                }
                let labels = labels(module, label);
                for (upper, count) in BUCKETS.iter().zip(h.counts) {
                    let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"{upper}\"}} {count}");
                }
                let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{metric}_sum{{{labels}}} {}", h.sum);
                let _ = writeln!(out, "{metric}_count{{{labels}}} {}", h.count);
            }
        });
        out
    }
}

/// A series' labels in the text format: the module, and the extra one.
fn labels(module: &str, label: &Label) -> String {
    match label {
        None => format!("module=\"{module}\""),
        Some((name, value)) => format!("module=\"{module}\",{name}=\"{value}\""),
    }
}
