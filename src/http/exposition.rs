//! The two text formats `GET /metrics` speaks: Prometheus text 0.0.4 by
//! default, and OpenMetrics 1.0 when the `Accept` header asks for it (as
//! Prometheus itself does). The registry encodes OpenMetrics; this module
//! picks the format and rewrites the encoding into 0.0.4 when that is the
//! one to send.

use axum::http::{HeaderMap, HeaderValue, header};

/// A text format of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// `text/plain; version=0.0.4`, what every Prometheus-compatible
    /// scraper reads.
    PrometheusText,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

const OPENMETRICS: &str = "application/openmetrics-text";

impl Format {
    /// The format `headers` ask for: OpenMetrics when `Accept` names it
    /// with a quality at least that of `text/plain`, else Prometheus text.
    pub(super) fn negotiate(headers: &HeaderMap) -> Format {
        let mut openmetrics = 0.0_f32;
        let mut text = 0.0_f32;
        for value in headers.get_all(header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for range in value.split(',') {
                let mut parts = range.split(';');
                let media = parts.next().unwrap_or_default().trim();
                let quality = parts
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                if media.eq_ignore_ascii_case(OPENMETRICS) {
                    openmetrics = openmetrics.max(quality);
                } else if ["text/plain", "text/*", "*/*"]
                    .iter()
                    .any(|m| media.eq_ignore_ascii_case(m))
                {
                    text = text.max(quality);
                }
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub(super) fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        })
    }
}

/// Rewrites OpenMetrics text into Prometheus text 0.0.4: a counter family
/// is named after its `_total` samples there, and `# UNIT` and `# EOF`
/// lines do not exist. Gauges, histograms, samples and labels read the
/// same in both.
pub(super) fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The counter families, from their `# TYPE` lines; `# HELP` comes
    // first, so the text is read twice.
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|comment| {
            let rest = line.strip_prefix(comment)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{comment}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(accept: &[&str], expected: Format) {
        let mut headers = HeaderMap::new();
        for value in accept {
            headers.append(header::ACCEPT, HeaderValue::from_str(value).expect("value"));
        }
        assert_eq!(Format::negotiate(&headers), expected, "{accept:?}");
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        use Format::{OpenMetrics, PrometheusText};
        check(&[], PrometheusText);
        check(&["*/*"], PrometheusText);
        check(&["text/plain"], PrometheusText);
        check(&["application/json"], PrometheusText);
        check(&["application/openmetrics-text"], OpenMetrics);
        check(
            &["Application/OpenMetrics-Text; version=1.0.0"],
            OpenMetrics,
        );
        // What Prometheus 2.x and 3.x send.
        check(
            &[
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ],
            OpenMetrics,
        );
        check(
            &["text/plain;version=0.0.4;q=1, application/openmetrics-text;q=0.5"],
            PrometheusText,
        );
        check(&["application/openmetrics-text;q=0"], PrometheusText);
        check(&["text/plain", "application/openmetrics-text"], OpenMetrics);
        check(&["application/openmetrics-text;q=bad"], OpenMetrics);
    }

    #[test]
    fn counters_take_their_sample_name_and_the_end_marker_goes() {
        let openmetrics = "\
# HELP requests Requests answered.
# TYPE requests counter
requests_total{method=\"GET\"} 3
# HELP keys Keys stored.
# TYPE keys gauge
keys 7
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
# UNIT latency_seconds seconds
latency_seconds_bucket{le=\"+Inf\"} 1
latency_seconds_sum 0.5
latency_seconds_count 1
# EOF
";
        let expected = "\
# HELP requests_total Requests answered.
# TYPE requests_total counter
requests_total{method=\"GET\"} 3
# HELP keys Keys stored.
# TYPE keys gauge
keys 7
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{le=\"+Inf\"} 1
latency_seconds_sum 0.5
latency_seconds_count 1
";
        assert_eq!(to_prometheus_text(openmetrics), expected);
    }
}
