//! `concord backup` and `concord restore` through the real binary: a backup taken while clients
//! keep writing holds everything acknowledged before it began, and serves it once restored; a
//! region restored from a backup rejoins a 3-region mesh under a new node id and converges with
//! the others, including what was written while it was down and what its old id wrote after the
//! backup; restore refuses a data dir that holds a database and a file that is not a Concord
//! database.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use concord_tests::cluster::{Cluster, SECRET, mesh};
use concord_tests::{Server, YClient, concord_bin, http_get};

const LINK: Duration = Duration::from_millis(20);
const CATCH_UP: Duration = Duration::from_secs(60);

/// Runs `concord ARGS` to completion: (success, stdout, stderr).
async fn concord(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(concord_bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true)
        .output()
        .await
        .expect("running concord");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The committed text root `t` of `doc` on `node` (`None`: never written there).
async fn text_on(node: &Server, doc: &str) -> Option<String> {
    let (status, body) = http_get(&node.http_url(&format!("/api/docs/{doc}/text/t"))).await;
    match status {
        200 => Some(String::from_utf8(body).unwrap()),
        404 => None,
        other => panic!("GET text of {doc}: {other}"),
    }
}

/// Waits until `doc` on `node` contains every one of `markers`.
async fn wait_markers(node: &Server, doc: &str, markers: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let text = text_on(node, doc).await.unwrap_or_default();
        let missing: Vec<&String> = markers.iter().filter(|m| !text.contains(*m)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{doc} on {} lacks {} of {} updates after {within:?}, first {:?}",
            node.addr,
            missing.len(),
            markers.len(),
            missing.first()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client writing small updates to one document, as fast as `every`, remembering each
/// update frame it sent with its marker text.
struct Writer {
    client: Arc<YClient>,
    sent: Arc<std::sync::Mutex<Sent>>,
}

/// The update frames a [`Writer`] sent, each with its marker.
type Sent = Vec<(Vec<u8>, String)>;

impl Writer {
    fn start(client: YClient, doc: usize, every: Duration, stop: Arc<AtomicBool>) -> Writer {
        let client = Arc::new(client);
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, s) = (client.clone(), sent.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            for i in 0.. {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let marker = format!("<d{doc}:{i}>");
                let frame = c.append_sent("t", &marker);
                s.lock().unwrap().push((frame, marker));
            }
        });
        Writer { client, sent }
    }

    /// The markers of the updates the server has acknowledged so far: echoed back, which in sync
    /// durability it does only once they are committed.
    fn acknowledged(&self) -> Vec<String> {
        let sent = self.sent.lock().unwrap().clone();
        let shared = self.client.shared.lock().unwrap();
        let echoed: HashSet<&[u8]> = shared.frames.iter().map(Vec::as_slice).collect();
        sent.into_iter()
            .filter(|(frame, _)| echoed.contains(frame.as_slice()))
            .map(|(_, marker)| marker)
            .collect()
    }
}

/// A backup taken while clients keep writing holds every update acknowledged before it began,
/// and a node restored from it serves them. With the copy taken without the WAL (the main file
/// only, as `cp concord.db` would), the updates committed since the last checkpoint are missing
/// and this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_holds_every_update_acknowledged_before_it() {
    const DOCS: usize = 6;
    let server = Server::start(&[]).await;
    let docs: Vec<String> = (0..DOCS).map(|d| format!("backup/load/{d}")).collect();
    // A few MB, so the copy takes a while: 640 KB of text per document.
    let mut clients = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        let c = YClient::connect(&server.ws_url(doc)).await;
        let mut last = Vec::new();
        for chunk in 0..10 {
            let filler = format!("[seed {d}.{chunk}]") + &"x".repeat(64 * 1024);
            last = c.append_sent("t", &filler);
        }
        c.wait(|s| s.echoed(&last)).await;
        clients.push(c);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<Writer> = clients
        .into_iter()
        .enumerate()
        .map(|(d, c)| Writer::start(c, d, Duration::from_millis(15), stop.clone()))
        .collect();
    // Writing for a while before the backup, and still writing while it runs.
    for w in &writers {
        w.client.wait(|s| s.frames.len() > 30).await;
    }
    let before: Vec<Vec<String>> = writers.iter().map(Writer::acknowledged).collect();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("concord-backup.db");
    let started = Instant::now();
    let (ok, stdout, stderr) =
        concord(&["backup", "--data-dir", path(&server.data_dir), path(&out)]).await;
    let took = started.elapsed();
    assert!(ok, "backup failed: {stdout}{stderr}");
    let after: Vec<Vec<String>> = writers.iter().map(Writer::acknowledged).collect();
    stop.store(true, Ordering::Relaxed);
    let during: usize =
        after.iter().map(Vec::len).sum::<usize>() - before.iter().map(Vec::len).sum::<usize>();
    eprintln!("backup took {took:?}, {during} updates acknowledged meanwhile: {stdout}");
    assert!(
        during > 0,
        "no update was acknowledged while the backup ran"
    );
    assert!(stdout.contains("committed seq"), "{stdout}");
    assert!(
        !tmp.path().join("concord-backup.db.tmp").exists(),
        "the temporary file was left behind"
    );

    // A second backup to the same file is refused, and leaves the first as it was.
    let len = std::fs::metadata(&out).unwrap().len();
    let (ok, _, stderr) =
        concord(&["backup", "--data-dir", path(&server.data_dir), path(&out)]).await;
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), len);

    let restored_dir = tmp.path().join("restored");
    let (ok, stdout, stderr) =
        concord(&["restore", path(&out), "--data-dir", path(&restored_dir)]).await;
    assert!(ok, "restore failed: {stdout}{stderr}");
    drop(writers);
    drop(server);
    let restored = Server::start_in(&restored_dir, &[]).await;
    for (d, doc) in docs.iter().enumerate() {
        let mut expected = before[d].clone();
        expected.push(format!("[seed {d}.9]"));
        // Already there: nothing else could bring it.
        wait_markers(&restored, doc, &expected, Duration::ZERO).await;
    }
}

/// A client on `node` appends `marker` to `doc`; returns once the node has it committed.
async fn write(node: &Server, doc: &str, marker: &str) {
    let w = YClient::connect(&node.ws_url(doc)).await;
    let frame = w.append_sent("t", marker);
    w.wait(|s| s.echoed(&frame)).await;
}

/// Clients on each of `nodes` write one marker `[NAME rI]` to each of `docs`; returns them.
async fn phase(c: &Cluster, nodes: &[usize], docs: &[String], name: &str) -> Vec<String> {
    let mut markers = Vec::new();
    for &i in nodes {
        let marker = format!("[{name} r{i}]");
        for d in docs {
            write(&c.nodes[i], d, &marker).await;
        }
        markers.push(marker);
    }
    markers
}

/// Region C (node 2) of a 3-region mesh is restored from a backup into a new data dir, under a
/// new node id, and converges with A and B: it gets what its old self wrote after the backup
/// (its peers hold that under the old id), what A and B wrote while it was down, and its own
/// new writes reach them. A and B are restarted before it comes back, so no document is live
/// on them and nothing but replication (snapshots, log, grafts) can bring C what it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_region_rejoins_its_mesh_under_a_new_id_and_converges() {
    let mut c = Cluster::start(3, &mesh(3), LINK, &[]).await;
    c.wait_linked(&mesh(3)).await;
    let docs: Vec<String> = (0..4).map(|d| format!("backup/mesh/{d}")).collect();
    let mut expected = phase(&c, &[0, 1, 2], &docs, "before backup").await;
    for d in &docs {
        c.wait_converged(d, CATCH_UP).await;
    }

    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("r2.db");
    let (ok, stdout, stderr) = concord(&[
        "backup",
        "--data-dir",
        path(&c.nodes[2].data_dir),
        path(&backup),
    ])
    .await;
    assert!(ok, "backup failed: {stdout}{stderr}");
    assert!(stdout.contains("node-2"), "{stdout}");

    // Written everywhere after the backup, C's own writes included: lost with C's disk, but its
    // peers hold them (under C's old id).
    expected.extend(phase(&c, &[0, 1, 2], &docs, "after backup").await);
    for d in &docs {
        c.wait_converged(d, CATCH_UP).await;
    }
    c.nodes[2].kill9().await;
    expected.extend(phase(&c, &[0, 1], &docs, "while down").await);

    // Restore refuses a data dir that holds a database, and files that are not Concord's.
    let (ok, _, stderr) = concord(&[
        "restore",
        path(&backup),
        "--data-dir",
        path(&c.nodes[2].data_dir),
    ])
    .await;
    assert!(!ok && stderr.contains("already holds"), "{stderr}");
    let junk = tmp.path().join("junk.db");
    std::fs::write(&junk, vec![b'j'; 8192]).unwrap();
    let other = tmp.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE docs (id INTEGER PRIMARY KEY, title TEXT);")
        .unwrap();
    for (file, why) in [
        (&junk, "not an SQLite database"),
        (&other, "has no column `name`"),
    ] {
        let dir = tmp.path().join("refused");
        let (ok, _, stderr) = concord(&["restore", path(file), "--data-dir", path(&dir)]).await;
        assert!(!ok, "{file:?} was restored");
        assert!(
            stderr.contains("is not a Concord database") && stderr.contains(why),
            "{stderr}"
        );
        assert!(!dir.join("concord.db").exists() && !dir.join("node-id").exists());
    }

    let new_dir = tmp.path().join("r2-restored");
    let (ok, stdout, stderr) =
        concord(&["restore", path(&backup), "--data-dir", path(&new_dir)]).await;
    assert!(ok, "restore failed: {stdout}{stderr}");
    assert!(
        stdout.contains("concord forget-peer node-2"),
        "restore does not say to forget the old id: {stdout}"
    );
    let new_id = std::fs::read_to_string(new_dir.join("node-id")).unwrap();
    assert_ne!(new_id, "node-2");
    assert!(
        stdout.contains(&format!("new node id: {new_id}")),
        "{stdout}"
    );

    // The old id is retired in the restored dir: a config file (or --node-id, or the env var)
    // naming it does not bring it back; the node refuses to start.
    let config = tmp.path().join("old-id.toml");
    std::fs::write(&config, "node-id = \"node-2\"\n").unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        concord(&[
            "serve",
            "--config",
            path(&config),
            "--data-dir",
            path(&new_dir),
            "--listen",
            "127.0.0.1:0",
        ]),
    )
    .await
    .expect("a node under its retired id must refuse to start, not serve");
    assert!(!refused.0, "served under the retired id");
    assert!(
        format!("{}{}", refused.1, refused.2).contains("node id node-2 is retired"),
        "{refused:?}"
    );
    assert_eq!(
        std::fs::read_to_string(new_dir.join("node-id")).unwrap(),
        new_id
    );

    // No document live on A and B: they are restarted before C comes back.
    for i in [0, 1] {
        c.nodes[i].sigterm().await;
        c.nodes[i].restart().await;
    }
    let peers = format!(
        "http://{},http://{}",
        c.proxies[&(2, 0)].addr,
        c.proxies[&(2, 1)].addr
    );
    c.nodes[2] = Server::start_in(
        &new_dir,
        &["--region", "r2", "--peer-secret", SECRET, "--peers", &peers],
    )
    .await;
    c.aim_proxies();
    let (_, body) = http_get(&c.nodes[2].http_url("/api/status")).await;
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["node_id"], new_id.as_str());
    c.nodes[2]
        .wait_linked_to(&["node-0", "node-1"], Duration::from_secs(30))
        .await;
    c.nodes[0]
        .wait_linked_to(&["node-1", &new_id], Duration::from_secs(30))
        .await;
    c.nodes[1]
        .wait_linked_to(&["node-0", &new_id], Duration::from_secs(30))
        .await;

    // Read from C first, while it is the only node with the documents live.
    for d in &docs {
        wait_markers(&c.nodes[2], d, &expected, CATCH_UP).await;
    }
    expected.extend(phase(&c, &[2], &docs, "restored").await);
    for d in &docs {
        let text = c.wait_converged(d, CATCH_UP).await;
        for m in &expected {
            assert!(text.contains(m), "{d} lacks {m}: {text}");
        }
    }

    // As restore said: forget the old id on each peer, while they run. They let go of it (no
    // `down` row, no metric for it), so `concord status` and the peer-down alert are clear.
    for i in [0, 1] {
        let (ok, stdout, stderr) = concord(&[
            "forget-peer",
            "node-2",
            "--data-dir",
            path(&c.nodes[i].data_dir),
        ])
        .await;
        assert!(ok, "forget-peer failed: {stdout}{stderr}");
    }
    for i in [0, 1] {
        let url = c.nodes[i].http_url("/api/status");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = http_get(&url).await;
            let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let ids: Vec<&str> = status["peers"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["node_id"].as_str())
                .collect();
            if !ids.contains(&"node-2") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {i} still shows the forgotten node-2: {ids:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (ok, stdout, _) = concord(&["status", &format!("http://{}", c.nodes[i].addr)]).await;
        assert!(ok, "concord status on node {i} after forget-peer: {stdout}");
        let (_, metrics) = http_get(&c.nodes[i].http_url("/metrics")).await;
        let metrics = String::from_utf8(metrics).unwrap();
        assert!(
            !metrics.contains("peer=\"node-2\""),
            "node {i} still has metrics for node-2"
        );
    }
}
