//! Damaged data on disk, through the real binary: bytes flipped inside a stored row are caught by
//! its checksum and that document alone is refused (1011), never served; a damaged database file
//! stops the server at startup with a message naming the file and saying what to do.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use concord_crdt::encode;
use concord_crdt::yrs::{ReadTxn, Transact};
use concord_tests::{Server, YClient, concord_bin};

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("concord.db")).unwrap()
}

/// Writes `text` into `doc`'s text `t` and waits until another connection is served it (so it is
/// committed).
async fn write(server: &Server, doc: &str, text: &str) {
    let c = YClient::connect(&server.ws_url(doc)).await;
    c.append("t", text);
    let check = YClient::connect(&server.ws_url(doc)).await;
    check.wait_text("t", text).await;
}

/// Connects to `doc`, sends Step1 and waits until the server either answers it (the document is
/// served) or closes the connection.
async fn connect_and_sync(server: &Server, doc: &str) -> YClient {
    let c = YClient::connect_raw(&server.ws_url(doc)).await;
    let sv = c.shared.lock().unwrap().doc.transact().state_vector();
    c.send(encode::sync_step1(&sv));
    c.wait(|s| s.synced || s.closed.is_some()).await;
    c
}

#[tokio::test]
async fn a_flipped_byte_in_a_stored_update_refuses_that_document_and_serves_the_others() {
    let mut server = Server::start(&[]).await;
    write(&server, "flip/bad", "precious words").await;
    write(&server, "flip/good", "untouched").await;
    assert!(server.sigterm().await.success());

    // Flip one bit of the stored text: the update still decodes, as other text.
    let (seq, mut data): (i64, Vec<u8>) = db(&server.data_dir)
        .query_row(
            "SELECT seq, data FROM log WHERE doc_id = (SELECT id FROM docs WHERE name = 'flip/bad')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let at = data
        .windows(8)
        .position(|w| w == b"precious")
        .expect("the text is stored verbatim");
    data[at] ^= 0x20; // "Precious"
    db(&server.data_dir)
        .execute(
            "UPDATE log SET data = ?2 WHERE seq = ?1",
            rusqlite::params![seq, data],
        )
        .unwrap();

    server.restart().await;
    for _ in 0..2 {
        let c = connect_and_sync(&server, "flip/bad").await;
        let closed = c.closed();
        assert!(
            closed.is_some(),
            "the damaged document was served as {:?}",
            c.text("t")
        );
        let (code, reason) = closed.unwrap();
        assert_eq!(code, 1011, "{reason}");
        assert!(reason.contains("corrupt"), "{reason}");
    }
    assert!(server.logged(&["document load failed", "flip/bad", "checksum"]));
    let good = connect_and_sync(&server, "flip/good").await;
    assert_eq!(good.closed(), None);
    assert_eq!(good.text("t"), "untouched");
    // Nothing replaced the damaged row: it is there to be repaired or inspected.
    let stored: Vec<u8> = db(&server.data_dir)
        .query_row("SELECT data FROM log WHERE seq = ?1", [seq], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, data);
}

/// Stores a few documents through a server in a fresh data dir and stops it cleanly (so the
/// whole database is in `concord.db`).
async fn a_stored_database() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &[]).await;
    for d in 0..10 {
        write(
            &server,
            &format!("doc/{d}"),
            &format!("{d}{}", "x".repeat(2000)),
        )
        .await;
    }
    assert!(server.sigterm().await.success());
    let path = dir.path().join("concord.db");
    (dir, path)
}

/// Starts the binary on `dir` and expects it to exit non-zero, with stderr naming `db` and saying
/// how to diagnose and what to do. Returns stderr.
async fn assert_refuses_to_start(dir: &Path, db: &Path) -> String {
    let child = tokio::process::Command::new(concord_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the server started on a damaged database instead of exiting")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "exit status {:?}: {stderr}",
        out.status
    );
    assert!(
        stderr.contains(&db.display().to_string()),
        "the message does not name the database file: {stderr}"
    );
    assert!(stderr.contains("PRAGMA integrity_check"), "{stderr}");
    assert!(stderr.contains("backup"), "{stderr}");
    stderr
}

#[tokio::test]
async fn a_database_with_a_damaged_header_stops_the_server_with_the_path_and_what_to_do() {
    let (dir, path) = a_stored_database().await;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..16].copy_from_slice(b"not a database!\0");
    std::fs::write(&path, bytes).unwrap();
    assert_refuses_to_start(dir.path(), &path).await;
}

#[tokio::test]
async fn a_truncated_database_stops_the_server_with_the_path_and_what_to_do() {
    let (dir, path) = a_stored_database().await;
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_refuses_to_start(dir.path(), &path).await;
}

#[tokio::test]
async fn a_database_with_a_damaged_root_page_stops_the_server_with_the_path_and_what_to_do() {
    let (dir, path) = a_stored_database().await;
    let (root, page_size): (i64, i64) = {
        let c = db(dir.path());
        let root = c
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 'docs'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (
            root,
            c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap(),
        )
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let at = ((root - 1) * page_size) as usize;
    bytes[at..at + 64].fill(0xA5);
    std::fs::write(&path, bytes).unwrap();
    assert_refuses_to_start(dir.path(), &path).await;
}
