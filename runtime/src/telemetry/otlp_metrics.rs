//! The metrics `/metrics` serves, also pushed over OTLP (feature `otel`), for collectors that take
//! OpenTelemetry metrics rather than scrape Prometheus.
//!
//! The exposition is the one source: every `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s) and once at
//! shutdown, the text `/metrics` would answer is read back into OTLP, so Marty's metrics, process
//! metrics and the service's own registered ones all go, and Prometheus and OTLP never disagree. The
//! hot path records once, into prometheus-client's atomics; only the export pays for the conversion.
//!
//! - counters become monotonic cumulative sums, named without `_total` (a collector exporting to
//!   Prometheus adds it back), gauges gauges, histograms explicit-bucket cumulative histograms;
//! - `http_server_request_duration_seconds` and `rpc_server_call_duration_seconds` take their
//!   semantic-convention names (`http.server.request.duration`, `rpc.server.call.duration`) and
//!   attribute keys (`http.request.method`, `http.response.status_code` as an integer, ...);
//! - units: `s` for names ending `_seconds`, `By` for `_bytes`, else what a `# UNIT` line says;
//! - every point's start time is when the registry was created, as cumulative sums require.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::otlp_client::{OtlpHttpClient, OtlpTls};
use crate::metrics::Metrics;

/// Where and how often the metrics go: OTLP's standard variables, read once at startup.
#[derive(Debug, Clone)]
pub(crate) struct ExportConfig {
    /// The full URL: `<endpoint>/v1/metrics` for `http/protobuf`, the endpoint itself for gRPC.
    url: String,
    protocol: Protocol,
    headers: Vec<(String, String)>,
    interval: Duration,
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl ExportConfig {
    /// The export the environment asks for, next to traces sent to `endpoint` (or to
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` alone): `None` when there is neither, or when
    /// `OTEL_METRICS_EXPORTER` is `none` (or `prometheus`: scraping only). `OTEL_EXPORTER_OTLP_METRICS_*`
    /// override the shared `OTEL_EXPORTER_OTLP_*` values, as the specification says.
    pub(crate) fn from_env(endpoint: Option<&str>) -> Result<Option<ExportConfig>, String> {
        Self::from_lookup(endpoint, |name| std::env::var(name).ok().filter(|value| !value.trim().is_empty()))
    }

    fn from_lookup(
        endpoint: Option<&str>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ExportConfig>, String> {
        match var("OTEL_METRICS_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none" | "prometheus") => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "OTEL_METRICS_EXPORTER `{other}` is not supported: use `otlp`, `prometheus` or `none`"
                ))
            }
        }
        // The variable that said it, for the error: the metrics' own, else the shared one.
        let either = |specific: &'static str, shared: &'static str| {
            var(specific).map(|value| (specific, value)).or_else(|| var(shared).map(|value| (shared, value)))
        };
        let protocol = match either("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") {
            None => Protocol::Grpc,
            Some((_, value)) if value.trim() == "grpc" => Protocol::Grpc,
            Some((_, value)) if value.trim() == "http/protobuf" => Protocol::HttpProtobuf,
            Some((name, other)) => {
                return Err(format!("{name} `{other}` is not supported: use `grpc` or `http/protobuf`"))
            }
        };
        let url = match (var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"), endpoint, protocol) {
            (Some(url), _, _) => url.trim().to_owned(),
            (None, None, _) => return Ok(None),
            (None, Some(endpoint), Protocol::Grpc) => endpoint.to_owned(),
            (None, Some(endpoint), Protocol::HttpProtobuf) => {
                format!("{}/v1/metrics", endpoint.trim_end_matches('/'))
            }
        };
        let headers = either("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
            .map(|(name, list)| parse_headers(name, &list))
            .transpose()?
            .unwrap_or_default();
        let millis = |name: &str, default: u64| match var(name) {
            None => Ok(Duration::from_millis(default)),
            Some(text) => match text.trim().parse::<u64>() {
                Ok(millis) if millis > 0 => Ok(Duration::from_millis(millis)),
                _ => Err(format!("{name} `{text}` is not a positive number of milliseconds")),
            },
        };
        Ok(Some(ExportConfig {
            url,
            protocol,
            headers,
            interval: millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000)?,
            timeout: millis("OTEL_METRIC_EXPORT_TIMEOUT", 30_000)?,
        }))
    }
}

/// `key=value,key=value`, values percent-encoded (W3C baggage format, as OTLP's headers variables),
/// checked here as HTTP header names and values so a bad one is reported at startup, named.
fn parse_headers(variable: &str, list: &str) -> Result<Vec<(String, String)>, String> {
    list.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) =
                pair.split_once('=').ok_or_else(|| format!("{variable}: `{}` is not key=value", pair.trim()))?;
            let (key, value) = (key.trim().to_ascii_lowercase(), percent_decode(value.trim()));
            http::HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| format!("{variable}: `{key}` is not a header name"))?;
            http::HeaderValue::from_str(&value)
                .map_err(|_| format!("{variable}: the value of `{key}` is not a header value"))?;
            Ok((key, value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escaped = match bytes.get(at..at + 3) {
            Some([b'%', high, low]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                std::str::from_utf8(&[*high, *low]).ok().and_then(|pair| u8::from_str_radix(pair, 16).ok())
            }
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                at += 3;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How long a shutdown waits for the last metrics export.
const LAST_EXPORT_WITHIN: Duration = Duration::from_secs(5);

/// The export running in the background; [`Self::finish`] sends a last time and stops it.
pub(crate) struct RunningExport {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningExport {
    /// Sends `metrics` every interval until [`Self::finish`].
    pub(crate) fn start(metrics: Arc<Metrics>, config: ExportConfig, resource: Vec<KeyValue>) -> RunningExport {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let client = match Client::new(&config) {
                Ok(client) => client,
                Err(error) => {
                    tracing::warn!(url = %config.url, %error, "OTLP metrics export disabled");
                    return;
                }
            };
            let resource = Resource { attributes: resource, ..Resource::default() };
            let mut failing = false;
            // A fixed period, however long each export takes; the first tick is at once, skipped.
            let mut period = tokio::time::interval(config.interval);
            period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            period.tick().await;
            loop {
                let last = tokio::select! {
                    _ = period.tick() => false,
                    _ = stopped.changed() => true,
                };
                let request = export_request(&metrics, resource.clone());
                let sent = match tokio::time::timeout(config.timeout, client.send(request)).await {
                    Ok(sent) => sent,
                    Err(_) => Err(format!("no answer within {:?}", config.timeout)),
                };
                match sent {
                    Ok(()) if std::mem::take(&mut failing) => {
                        tracing::info!(url = %config.url, "OTLP metrics export works again");
                    }
                    Ok(()) => {}
                    // Logged once until it works again: a collector down for an hour is one line.
                    Err(error) if !failing => {
                        tracing::warn!(url = %config.url, %error, "OTLP metrics export failed; retrying each interval");
                        failing = true;
                    }
                    Err(_) => {}
                }
                if last {
                    return;
                }
            }
        });
        RunningExport { stop, task }
    }

    /// Sends the metrics one last time and stops; a collector that does not answer within 5 s (or
    /// the export timeout, when shorter) is given up on, so it cannot hold a shutdown up.
    pub(crate) async fn finish(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(LAST_EXPORT_WITHIN, &mut self.task).await.is_err() {
            tracing::warn!("the last OTLP metrics export did not finish in time; dropped");
        }
    }
}

/// A server that returns early (a startup error) stops its export too.
impl Drop for RunningExport {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type GrpcClient = opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient<
    tonic::transport::Channel,
>;

enum Client {
    Grpc { client: Box<GrpcClient>, headers: Vec<(String, String)> },
    Http { client: OtlpHttpClient, url: String, headers: Vec<(String, String)> },
}

impl Client {
    fn new(config: &ExportConfig) -> Result<Client, String> {
        let tls = OtlpTls::from_env("METRICS")?;
        match config.protocol {
            Protocol::Grpc => {
                let mut endpoint = tonic::transport::Endpoint::from_shared(config.url.clone())
                    .map_err(|error| error.to_string())?
                    .connect_timeout(config.timeout)
                    .timeout(config.timeout);
                if config.url.starts_with("https://") {
                    endpoint = endpoint.tls_config(tls.tonic()).map_err(|error| error.to_string())?;
                }
                let client = Box::new(GrpcClient::new(endpoint.connect_lazy()));
                Ok(Client::Grpc { client, headers: config.headers.clone() })
            }
            Protocol::HttpProtobuf => {
                let client = tls.http_client(config.timeout)?;
                Ok(Client::Http { client, url: config.url.clone(), headers: config.headers.clone() })
            }
        }
    }

    async fn send(&self, request: ExportMetricsServiceRequest) -> Result<(), String> {
        match self {
            Client::Grpc { client, headers } => {
                let mut request = tonic::Request::new(request);
                for (key, value) in headers {
                    let key = key.parse::<tonic::metadata::MetadataKey<_>>().map_err(|error| error.to_string())?;
                    let value = value.parse().map_err(|_| format!("header `{key}` has a value gRPC cannot carry"))?;
                    request.metadata_mut().insert(key, value);
                }
                let mut client = client.as_ref().clone();
                client.export(request).await.map(drop).map_err(|status| status.to_string())
            }
            Client::Http { client, url, headers } => {
                use prost::Message as _;
                let mut post = http::Request::post(url).header("content-type", "application/x-protobuf");
                for (key, value) in headers {
                    post = post.header(key, value);
                }
                let request = post.body(request.encode_to_vec()).map_err(|error| error.to_string())?;
                // On a thread of its own, not `spawn_blocking`: the runtime waits for its blocking
                // tasks when it shuts down, so a collector that never answers would hold the exit
                // for the whole export timeout.
                let (client, (answer, answered)) = (client.clone(), tokio::sync::oneshot::channel());
                std::thread::Builder::new()
                    .name("marty-otlp-metrics".into())
                    .spawn(move || {
                        let _ = answer.send(client.send(request).map_err(|error| error.to_string()));
                    })
                    .map_err(|error| error.to_string())?;
                let response = answered.await.map_err(|_| "the export thread ended without an answer".to_owned())??;
                match response.status() {
                    status if status.is_success() => Ok(()),
                    status => Err(format!("the collector answered {status}")),
                }
            }
        }
    }
}

/// What to send now: the exposition of `metrics`, under the service's resource.
fn export_request(metrics: &Metrics, resource: Resource) -> ExportMetricsServiceRequest {
    let now = unix_nanos(std::time::SystemTime::now());
    let scope = InstrumentationScope {
        name: "marty".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..InstrumentationScope::default()
    };
    let metrics = from_exposition(&metrics.render(), unix_nanos(metrics.created), now);
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope), metrics, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}

fn unix_nanos(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64)
}

/// Metrics whose Prometheus names stand for an OpenTelemetry semantic convention.
const SEMANTIC_NAMES: [(&str, &str); 2] = [
    ("http_server_request_duration_seconds", "http.server.request.duration"),
    ("rpc_server_call_duration_seconds", "rpc.server.call.duration"),
];

/// Their labels, back to the attribute keys of the conventions.
const SEMANTIC_KEYS: [(&str, &str); 6] = [
    ("http_request_method", "http.request.method"),
    ("http_route", "http.route"),
    ("http_response_status_code", "http.response.status_code"),
    ("rpc_service", "rpc.service"),
    ("rpc_method", "rpc.method"),
    ("rpc_grpc_status_code", "rpc.grpc.status_code"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// Summaries, state sets and the like: Marty makes none, and they are left out.
    Unsupported,
}

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct HistogramPoint {
    /// `(le, cumulative count)` as the exposition lists them.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

struct Family {
    name: String,
    help: String,
    unit: String,
    kind: Kind,
    numbers: Vec<(Labels, f64)>,
    histograms: Vec<(Labels, HistogramPoint)>,
    histogram_index: HashMap<Labels, usize>,
}

impl Family {
    fn new(name: &str) -> Family {
        Family {
            name: name.to_owned(),
            help: String::new(),
            unit: String::new(),
            kind: Kind::Unsupported,
            numbers: Vec::new(),
            histograms: Vec::new(),
            histogram_index: HashMap::new(),
        }
    }

    fn add_sample(&mut self, suffix: &str, mut labels: Labels, value: f64) {
        match (self.kind, suffix) {
            (Kind::Counter, "_total") | (Kind::Gauge, "") => self.numbers.push((labels, value)),
            (Kind::Histogram, "_bucket" | "_sum" | "_count") => {
                let le = labels.iter().position(|(key, _)| key == "le").map(|at| labels.remove(at).1);
                let at = *self.histogram_index.entry(labels.clone()).or_insert_with(|| {
                    self.histograms.push((labels, HistogramPoint::default()));
                    self.histograms.len() - 1
                });
                let point = &mut self.histograms[at].1;
                match (suffix, le.and_then(|le| parse_value(&le))) {
                    ("_bucket", Some(le)) => point.buckets.push((le, value as u64)),
                    ("_sum", _) => point.sum = value,
                    ("_count", _) => point.count = value as u64,
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// `start` begins the cumulative series; the process's own counters begin at `process_start`.
    fn into_metric(self, start: u64, process_start: u64, now: u64) -> Option<Metric> {
        let start = if self.name.starts_with("process_") { process_start } else { start };
        let semantic = SEMANTIC_NAMES.iter().find(|(prometheus, _)| *prometheus == self.name).map(|(_, otel)| *otel);
        let unit = if self.name.ends_with("_seconds") {
            "s".to_owned()
        } else if self.name.ends_with("_bytes") {
            "By".to_owned()
        } else {
            self.unit
        };
        let number = |(labels, value): (Labels, f64)| NumberDataPoint {
            attributes: attributes(labels),
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..NumberDataPoint::default()
        };
        let data = match self.kind {
            Kind::Counter if !self.numbers.is_empty() => metric::Data::Sum(Sum {
                data_points: self.numbers.into_iter().map(number).collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            Kind::Gauge if !self.numbers.is_empty() => {
                let data_points = self
                    .numbers
                    .into_iter()
                    .map(number)
                    .map(|point| NumberDataPoint { start_time_unix_nano: 0, ..point });
                metric::Data::Gauge(Gauge { data_points: data_points.collect() })
            }
            Kind::Histogram if !self.histograms.is_empty() => metric::Data::Histogram(Histogram {
                data_points: self
                    .histograms
                    .into_iter()
                    .map(|(labels, point)| histogram_point(labels, point, start, now))
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
            _ => return None,
        };
        Some(Metric {
            name: semantic.map_or(self.name, str::to_owned),
            description: self.help,
            unit,
            data: Some(data),
            ..Metric::default()
        })
    }
}

/// OTLP's buckets count what falls in each (not below each bound), with `+Inf` implied.
fn histogram_point(labels: Labels, mut point: HistogramPoint, start: u64, now: u64) -> HistogramDataPoint {
    point.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut below = 0;
    let mut bucket_counts = Vec::with_capacity(point.buckets.len() + 1);
    let mut explicit_bounds = Vec::with_capacity(point.buckets.len());
    for (le, cumulative) in &point.buckets {
        if le.is_finite() {
            explicit_bounds.push(*le);
            bucket_counts.push(cumulative.saturating_sub(below));
            below = (*cumulative).max(below);
        }
    }
    bucket_counts.push(point.count.saturating_sub(below));
    HistogramDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: point.count,
        sum: Some(point.sum),
        bucket_counts,
        explicit_bounds,
        ..HistogramDataPoint::default()
    }
}

fn attributes(labels: Labels) -> Vec<KeyValue> {
    labels
        .into_iter()
        .map(|(key, value)| {
            let key = SEMANTIC_KEYS.iter().find(|(label, _)| *label == key).map_or(key, |(_, otel)| (*otel).to_owned());
            // The conventions make status codes integers; a label is always text.
            let value = match value.parse::<i64>() {
                Ok(code) if key.ends_with(".status_code") => any_value::Value::IntValue(code),
                _ => any_value::Value::StringValue(value),
            };
            KeyValue { key, value: Some(AnyValue { value: Some(value) }), ..KeyValue::default() }
        })
        .collect()
}

/// Reads an OpenMetrics text exposition (as prometheus-client writes it) into OTLP metrics.
fn from_exposition(text: &str, start: u64, now: u64) -> Vec<Metric> {
    let mut families: Vec<Family> = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (Some(keyword), Some(name)) = (words.next(), words.next()) else { continue };
            let rest = words.next().unwrap_or("");
            if !matches!(keyword, "HELP" | "TYPE" | "UNIT") {
                continue;
            }
            if families.last().is_none_or(|family| family.name != name) {
                families.push(Family::new(name));
            }
            let family = families.last_mut().expect("pushed above");
            match keyword {
                // prometheus-client writes help text as given, unescaped.
                "HELP" => family.help = rest.to_owned(),
                "TYPE" => {
                    family.kind = match rest {
                        "counter" => Kind::Counter,
                        "gauge" | "unknown" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        _ => Kind::Unsupported,
                    }
                }
                _ => family.unit = rest.to_owned(),
            }
            continue;
        }
        let (Some(family), Some((name, labels, value))) = (families.last_mut(), parse_sample(line)) else { continue };
        let Some(suffix) = name.strip_prefix(family.name.as_str()) else { continue };
        family.add_sample(suffix, labels, value);
    }
    // Counted since the process started, not since the registry was made.
    let process_start = families
        .iter()
        .find(|family| family.name == "process_start_time_seconds")
        .and_then(|family| family.numbers.first())
        .map_or(start, |(_, seconds)| (seconds * 1e9) as u64);
    families.into_iter().filter_map(|family| family.into_metric(start, process_start, now)).collect()
}

/// `name{key="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        let mut chars = inside.char_indices().peekable();
        loop {
            while chars.next_if(|(_, c)| *c == ',' || *c == ' ').is_some() {}
            let (start, first) = chars.next()?;
            if first == '}' {
                rest = &inside[start + 1..];
                break;
            }
            let equals = inside[start..].find('=')? + start;
            let key = inside[start..equals].to_owned();
            while chars.next_if(|(at, _)| *at <= equals).is_some() {}
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.push((key, value));
        }
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some((name, labels, value))
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family as LabelFamily;

    fn string(kv: &KeyValue) -> String {
        match kv.value.as_ref().and_then(|value| value.value.as_ref()) {
            Some(any_value::Value::StringValue(text)) => text.clone(),
            Some(any_value::Value::IntValue(number)) => format!("int:{number}"),
            other => format!("{other:?}"),
        }
    }

    fn find<'a>(metrics: &'a [Metric], name: &str) -> &'a Metric {
        metrics.iter().find(|metric| metric.name == name).unwrap_or_else(|| panic!("no {name} in {metrics:#?}"))
    }

    #[test]
    fn histograms_counters_and_gauges_keep_their_values_under_otlp_names() {
        let metrics = Metrics::with_buckets(crate::metrics::Buckets::from_seconds(&[0.1, 1.0]));
        metrics.record_http_request("GET", "/orders/{id}".into(), 200, Duration::from_millis(50));
        metrics.record_http_request("GET", "/orders/{id}".into(), 200, Duration::from_millis(500));
        metrics.record_http_request("GET", "/orders/{id}".into(), 200, Duration::from_secs(5));
        let created: LabelFamily<Vec<(String, String)>, Counter> = LabelFamily::default();
        created.get_or_create(&vec![("item".to_owned(), "a \"quoted\", odd} book".to_owned())]).inc_by(7);
        metrics.register("orders_created", "Orders created, by item", created);

        let exported = from_exposition(&metrics.render(), 1, 2);

        let http = find(&exported, "http.server.request.duration");
        assert_eq!(http.unit, "s");
        let Some(metric::Data::Histogram(histogram)) = &http.data else { panic!("{http:?}") };
        assert_eq!(histogram.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let point = &histogram.data_points[0];
        assert_eq!(
            (point.count, point.explicit_bounds.clone(), point.bucket_counts.clone()),
            (3, vec![0.1, 1.0], vec![1, 1, 1])
        );
        assert!((point.sum.unwrap() - 5.55).abs() < 1e-9, "{point:?}");
        assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (1, 2));
        let attributes: Vec<String> = point.attributes.iter().map(|kv| format!("{}={}", kv.key, string(kv))).collect();
        assert_eq!(
            attributes,
            ["http.request.method=GET", "http.route=/orders/{id}", "http.response.status_code=int:200"]
        );

        let orders = find(&exported, "orders_created");
        assert_eq!(orders.description, "Orders created, by item.");
        let Some(metric::Data::Sum(sum)) = &orders.data else { panic!("{orders:?}") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points[0].value, Some(number_data_point::Value::AsDouble(7.0)));
        assert_eq!(string(&sum.data_points[0].attributes[0]), "a \"quoted\", odd} book");

        let Some(metric::Data::Gauge(_)) = &find(&exported, "marty_outbox_pending").data else { panic!("a gauge") };
        // Families nothing was recorded in are left out rather than sent empty.
        assert!(exported.iter().all(|metric| metric.name != "marty_call_duration_seconds"), "{exported:#?}");
    }

    #[test]
    fn the_environment_chooses_protocol_url_headers_and_interval() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
        };
        let grpc = ExportConfig::from_lookup(Some("http://collector:4317"), env(&[])).unwrap().unwrap();
        assert_eq!(
            (grpc.url.as_str(), grpc.protocol, grpc.interval),
            ("http://collector:4317", Protocol::Grpc, Duration::from_secs(60))
        );
        let http = ExportConfig::from_lookup(
            Some("http://collector:4318/"),
            env(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20abc,x-tenant=7"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(http.url, "http://collector:4318/v1/metrics");
        assert_eq!(
            http.headers,
            [("authorization".to_owned(), "Bearer abc".to_owned()), ("x-tenant".to_owned(), "7".to_owned())]
        );
        assert_eq!(http.interval, Duration::from_millis(250));
        assert!(ExportConfig::from_lookup(Some("http://c"), env(&[("OTEL_METRICS_EXPORTER", "none")]))
            .unwrap()
            .is_none());
        assert!(ExportConfig::from_lookup(None, env(&[])).unwrap().is_none(), "no endpoint, no export");
        let own = ExportConfig::from_lookup(None, env(&[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317")]));
        assert_eq!(own.unwrap().unwrap().url, "http://m:4317", "the metrics' own endpoint is enough");
        let bad =
            ExportConfig::from_lookup(Some("http://c"), env(&[("OTEL_METRIC_EXPORT_INTERVAL", "soon")])).unwrap_err();
        assert!(bad.contains("OTEL_METRIC_EXPORT_INTERVAL"), "{bad}");
        let bad = ExportConfig::from_lookup(Some("http://c"), env(&[("OTEL_EXPORTER_OTLP_HEADERS", "bad key=1")]));
        assert!(bad.unwrap_err().contains("OTEL_EXPORTER_OTLP_HEADERS: `bad key` is not a header name"));
        let bad = ExportConfig::from_lookup(Some("http://c"), env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]));
        assert!(bad.unwrap_err().starts_with("OTEL_EXPORTER_OTLP_PROTOCOL `http/json`"), "the variable that said it");
        assert_eq!(percent_decode("a%20b%+1%2"), "a b%+1%2", "only %XX with two hex digits decodes");
    }
}
