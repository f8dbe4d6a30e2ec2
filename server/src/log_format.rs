//! How log lines look (`--log-format`): the usual human-readable text, or JSON for log pipelines
//! (Loki, Elasticsearch) that should not have to parse text. A JSON line is one object with
//! `ts` (RFC 3339, UTC), `level`, `target`, `msg`, and the fields of the event and of every span
//! it is in (`region` from the node's span, `peer` from a peer link's, `doc`, `sub`, ...)
//! flattened at the top level, so a query can filter on `doc` without knowing where it was
//! recorded. `RUST_LOG` filters both formats.

use std::io::Write;
use std::time::SystemTime;

use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The keys every JSON line has; a field of the same name is written as `_<name>` instead.
const RESERVED: [&str; 4] = ["ts", "level", "target", "msg"];

/// Installs the process's log subscriber, on stdout, filtered by `RUST_LOG` (default `info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(JsonLayer::new(std::io::stdout))
            .init(),
    }
}

/// Writes each event as one JSON object on one line.
pub struct JsonLayer<W> {
    make_writer: W,
}

impl<W> JsonLayer<W> {
    pub fn new(make_writer: W) -> Self {
        JsonLayer { make_writer }
    }
}

/// A span's fields as JSON, kept in the span's extensions until the span closes.
struct SpanFields(Map<String, Value>);

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Map::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(fields)) = ext.get_mut::<SpanFields>() {
            values.record(&mut JsonVisitor(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        // Outermost span first, so an inner span's field wins over an outer one of the same
        // name, and the event's own fields win over both.
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(span_fields)) = span.extensions().get::<SpanFields>() {
                    fields.extend(span_fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        event.record(&mut JsonVisitor(&mut fields));
        let msg = fields
            .remove("message")
            .unwrap_or_else(|| Value::String(String::new()));
        let ts = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let mut line = match object_line(&ts, meta.level().as_str(), meta.target(), &msg, &fields) {
            Ok(line) => line,
            Err(_) => return,
        };
        line.push(b'\n');
        // One write per line, so lines from several threads never interleave.
        let _ = self.make_writer.make_writer().write_all(&line);
    }
}

/// One line's object, with its fixed keys first (so a reader sees when, how bad and what before
/// the details), then the fields.
fn object_line(
    ts: &str,
    level: &str,
    target: &str,
    msg: &Value,
    fields: &Map<String, Value>,
) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::new(&mut out);
    let mut map = serializer.serialize_map(Some(4 + fields.len()))?;
    map.serialize_entry("ts", ts)?;
    map.serialize_entry("level", level)?;
    map.serialize_entry("target", target)?;
    map.serialize_entry("msg", msg)?;
    for (k, v) in fields {
        map.serialize_entry(k, v)?;
    }
    map.end()?;
    Ok(out)
}

/// Collects fields into a JSON map: numbers and booleans as such, everything else as the text
/// `Display` (`%x`) or `Debug` (`?x`) gives.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        let key = if RESERVED.contains(&name) {
            format!("_{name}")
        } else {
            name.to_string()
        };
        self.0.insert(key, value);
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines(buffer: &Buffer) -> Vec<Map<String, Value>> {
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| match serde_json::from_str(l) {
                Ok(Value::Object(m)) => m,
                other => panic!("not a JSON object: {l}: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_event_is_one_object_with_its_spans_fields_flattened() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(JsonLayer::new(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let node = crate::node::node_span("eu");
            let _node = node.enter();
            let peer = tracing::error_span!("peer", peer = "us-1", peer_region = "us");
            let _peer = peer.enter();
            tracing::warn!(doc = %"notes", bytes = 12u64, ok = true, "a \"quoted\"\nmessage");
            // A field named like a reserved key does not overwrite it.
            tracing::info!(level = "mine", "second");
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["msg"], "a \"quoted\"\nmessage");
        assert_eq!(first["target"], module_path!());
        assert_eq!(first["region"], "eu");
        assert_eq!(first["peer"], "us-1");
        assert_eq!(first["peer_region"], "us");
        assert_eq!(first["doc"], "notes");
        assert_eq!(first["bytes"], 12);
        assert_eq!(first["ok"], true);
        let ts = first["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z'), "{ts}");
        humantime::parse_rfc3339(ts).expect("ts is RFC 3339");
        let raw = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(raw.starts_with("{\"ts\":"), "{raw}");
        assert!(raw.contains("\"level\":\"WARN\",\"target\":"), "{raw}");
        assert_eq!(lines[1]["level"], "INFO");
        assert_eq!(lines[1]["_level"], "mine");
    }
}
