//! What `concord status` prints, as a pure function of `/api/status`'s JSON (no I/O, so every
//! line of it is unit-tested): the node, then one row per peer with its region, node id, link
//! state, lag, backlog, last contact and last error, and the exit status scripts read (0 when
//! every peer is linked, 1 otherwise). The field names are those of [`crate::status`].
//!
//! The JSON comes from the network: every string is stripped of control characters before it is
//! printed (a hostile answer must not drive the terminal), and cut to a bounded width.

use serde::Deserialize;

/// The fields of `/api/status` the table shows.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub region: String,
    pub url: String,
    pub committed_seq: u64,
    pub documents: u64,
    pub connections: u64,
    pub peers: Vec<PeerStatus>,
}

/// One entry of `peers`.
#[derive(Debug, Clone, Deserialize)]
pub struct PeerStatus {
    pub url: String,
    /// Unknown until the peer was reached once.
    pub node_id: Option<String>,
    pub region: Option<String>,
    pub connected: bool,
    /// Null while the link is down.
    pub lag_ms: Option<u64>,
    pub backlog: u64,
    /// Null when never heard from.
    pub last_contact_ago_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// Exit status when every peer is linked (or there is none).
pub const ALL_LINKED: i32 = 0;
/// Exit status when some peer's link is down.
pub const PEER_DOWN: i32 = 1;

/// Node ids longer than this are cut (generated ones are `node-` and 16 hex digits).
const NODE_ID_WIDTH: usize = 14;
/// Last errors longer than this are cut.
const ERROR_WIDTH: usize = 72;
/// Any other string from the answer (region, URL).
const TEXT_WIDTH: usize = 64;

/// The exit status `status` calls for.
pub fn exit_code(status: &NodeStatus) -> i32 {
    if status.peers.iter().all(|p| p.connected) {
        ALL_LINKED
    } else {
        PEER_DOWN
    }
}

/// The whole report: the node, a summary line, and the peer table.
pub fn render(status: &NodeStatus) -> String {
    let linked = status.peers.iter().filter(|p| p.connected).count();
    let mut out = format!(
        "node     {} (region {}) at {}\n\
         log      committed seq {}, {} documents live, {} connections\n",
        clean(&status.node_id, NODE_ID_WIDTH * 2),
        clean(&status.region, TEXT_WIDTH),
        clean(&status.url, TEXT_WIDTH),
        status.committed_seq,
        status.documents,
        status.connections,
    );
    if status.peers.is_empty() {
        out.push_str("peers    none\n");
        return out;
    }
    out.push_str(&format!(
        "peers    {linked} of {} linked\n\n",
        status.peers.len()
    ));
    let header = [
        "REGION",
        "NODE",
        "LINK",
        "LAG",
        "BACKLOG",
        "LAST CONTACT",
        "LAST ERROR",
    ];
    let rows: Vec<[String; 7]> = status.peers.iter().map(row).collect();
    out.push_str(&table(&header, &rows));
    out
}

/// One peer's cells, in the header's order.
fn row(peer: &PeerStatus) -> [String; 7] {
    let node = match &peer.node_id {
        Some(id) => short(&clean(id, TEXT_WIDTH), NODE_ID_WIDTH),
        // Never reached: the URL it is dialed at says which one it is.
        None => clean(&peer.url, TEXT_WIDTH),
    };
    [
        peer.region
            .as_deref()
            .filter(|r| !r.is_empty())
            .map_or("-".into(), |r| clean(r, TEXT_WIDTH)),
        node,
        if peer.connected { "up" } else { "down" }.into(),
        peer.lag_ms.map_or("-".into(), duration),
        peer.backlog.to_string(),
        peer.last_contact_ago_ms
            .map_or("never".into(), |ms| format!("{} ago", duration_coarse(ms))),
        peer.last_error
            .as_deref()
            .filter(|e| !e.is_empty())
            .map_or("-".into(), |e| clean(e, ERROR_WIDTH)),
    ]
}

/// Left-aligned columns two spaces apart; the last one is not padded.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A lag: `850ms`, `2.4s`, `3m05s`, `2h10m`.
fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}.{}s", ms / 1000, ms % 1000 / 100),
        _ => duration_coarse(ms),
    }
}

/// A time ago, to the second: `0s`, `42s`, `3m05s`, `2h10m`, `3d4h`.
fn duration_coarse(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `text` made safe to print and at most `width` characters: whitespace runs (newlines too)
/// become one space, other control characters are dropped, and a cut ends with `…`.
fn clean(text: &str, width: usize) -> String {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| !c.is_control() && !is_format(*c))
                .collect()
        })
        .collect();
    short(&words.join(" "), width)
}

/// Invisible characters that change how a terminal shows the text around them: bidirectional
/// overrides and isolates (U+202E turns the rest of a line around), zero-width characters, and
/// the byte-order mark.
fn is_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// At most `width` characters, the last one `…` when cut.
fn short(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A status as `/api/status` sends it (extra fields included: the table ignores them).
    fn sample() -> serde_json::Value {
        json!({
            "node_id": "node-0", "region": "eu", "url": "http://10.0.0.1:8080",
            "committed_seq": 1234, "documents": 7, "connections": 12,
            "full_states_encoded": 3, "replication": {"originated_updates": 5, "origins": []},
            "peers": [
                {"url": "http://10.0.0.2:8080", "node_id": "node-1", "region": "us",
                 "direction": "outbound", "connected": true, "lag_ms": 85, "backlog": 0,
                 "last_contact_ago_ms": 1200, "last_error": null, "acked_seq": 1234},
                {"url": "http://10.0.0.3:8080", "node_id": "node-8a7c3f01b2d4e5f6",
                 "region": "ap", "direction": "inbound", "connected": false, "lag_ms": null,
                 "backlog": 42, "last_contact_ago_ms": 125_000,
                 "last_error": "connecting: Connection refused (os error 111)"},
                {"url": "http://10.0.0.4:8080", "node_id": null, "region": null,
                 "connected": false, "lag_ms": null, "backlog": 1234,
                 "last_contact_ago_ms": null, "last_error": "dns error"}
            ]
        })
    }

    fn parse(v: serde_json::Value) -> NodeStatus {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_report_shows_the_node_and_a_row_per_peer() {
        let text = render(&parse(sample()));
        let expected = "\
node     node-0 (region eu) at http://10.0.0.1:8080
log      committed seq 1234, 7 documents live, 12 connections
peers    1 of 3 linked

REGION  NODE                  LINK  LAG   BACKLOG  LAST CONTACT  LAST ERROR
us      node-1                up    85ms  0        1s ago        -
ap      node-8a7c3f01…        down  -     42       2m05s ago     connecting: Connection refused (os error 111)
-       http://10.0.0.4:8080  down  -     1234     never         dns error
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn exit_status_is_0_only_when_every_peer_is_linked() {
        let mut status = parse(sample());
        assert_eq!(exit_code(&status), PEER_DOWN);
        for p in &mut status.peers {
            p.connected = true;
        }
        assert_eq!(exit_code(&status), ALL_LINKED);
        status.peers.clear();
        assert_eq!(exit_code(&status), ALL_LINKED, "no peers: nothing is down");
    }

    #[test]
    fn a_node_without_peers_says_so() {
        let mut v = sample();
        v["peers"] = json!([]);
        let text = render(&parse(v));
        assert!(text.ends_with("peers    none\n"), "{text}");
        assert!(!text.contains("REGION"), "{text}");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(999), "999ms");
        assert_eq!(duration(2_450), "2.4s");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration_coarse(59_999), "59s");
        assert_eq!(duration_coarse(7_800_000), "2h10m");
        assert_eq!(duration_coarse(273_600_000), "3d4h");
    }

    #[test]
    fn hostile_strings_cannot_drive_the_terminal_or_the_layout() {
        let mut v = sample();
        v["peers"][0]["region"] = json!("us\u{1b}[2J\u{1b}]0;pwned\u{7}\u{202E}desrever\u{200B}");
        v["peers"][0]["last_error"] = json!(format!("line one\nline two\r{}", "x".repeat(500)));
        let text = render(&parse(v));
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(!text.contains('\r'), "{text:?}");
        assert!(
            !text.contains('\u{202E}') && !text.contains('\u{200B}'),
            "{text:?}"
        );
        let row = text.lines().find(|l| l.contains("line one")).unwrap();
        assert!(row.contains("line one line two"), "{row}");
        assert!(row.ends_with('…') && row.chars().count() < 200, "{row}");
        assert_eq!(text.lines().count(), 8, "one line per peer: {text}");
    }

    #[test]
    fn an_answer_without_the_fields_is_refused() {
        assert!(serde_json::from_value::<NodeStatus>(json!({"node_id": "x"})).is_err());
    }
}
