//! Reading `GET /metrics` back: the text parsed as Prometheus' exposition format, and single
//! values and series picked by name and labels.

pub use prometheus_parse::Scrape;

/// Parses `text`; panics (with the text) if it does not parse, or if the parser, which skips
/// what it cannot read, read back fewer samples than `text` has sample lines, or if
/// `promtool check metrics` (Prometheus' own parser and linter; `PROMTOOL` or `promtool` on
/// `PATH`) finds a problem, where it is installed.
pub fn parse(text: &str) -> Scrape {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    let lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    let read: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            // Each bucket is a line of its own.
            prometheus_parse::Value::Histogram(buckets) => buckets.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(read, lines, "samples read back from:\n{text}");
    if let Some(out) = promtool(text) {
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    scrape
}

/// `promtool check metrics` on `text`; `None` if promtool is not installed.
fn promtool(text: &str) -> Option<std::process::Output> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let tool = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    let mut child = Command::new(tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let written = child.stdin.take()?.write_all(text.as_bytes());
    let out = child.wait_with_output().ok()?;
    written.ok().map(|()| out)
}

/// The value of the counter or gauge `name` (or a histogram's `_sum` or `_count`) with exactly
/// `labels`; panics unless there is exactly one.
pub fn metric(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0]
}

/// The values of `label_names` in each series of `name`, sorted (a histogram's series are its
/// label sets without `le`).
pub fn series(scrape: &Scrape, name: &str, label_names: &[&str]) -> Vec<Vec<String>> {
    let mut all: Vec<Vec<String>> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            label_names
                .iter()
                .map(|l| s.labels.get(l).unwrap_or_default().to_string())
                .collect()
        })
        .collect();
    all.sort();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_and_series() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"x\"} 2\na_total{k=\"y\"} 3\n# HELP h H.\n# TYPE h histogram\nh_bucket{p=\"v\",le=\"1\"} 1\nh_bucket{p=\"v\",le=\"+Inf\"} 2\nh_sum{p=\"v\"} 4.5\nh_count{p=\"v\"} 2\n";
        let s = parse(text);
        assert_eq!(metric(&s, "a_total", &[("k", "y")]), 3.0);
        assert_eq!(metric(&s, "h_count", &[("p", "v")]), 2.0);
        assert_eq!(series(&s, "a_total", &["k"]), [["x"], ["y"]]);
        assert_eq!(series(&s, "h", &["p"]), [["v"]]);
    }

    #[test]
    #[should_panic(expected = "samples read back")]
    fn a_line_the_parser_skips_fails() {
        parse("# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"x\"} two\n");
    }
}
