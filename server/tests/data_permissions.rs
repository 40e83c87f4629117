//! The data directory holds message text in plain form: the server keeps it to its own user.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use support::*;

fn modes_under(dir: &Path, out: &mut Vec<(String, u32, bool)>) {
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    out.push((dir.display().to_string(), mode, true));
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            modes_under(&path, out);
        } else {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            out.push((path.display().to_string(), mode, false));
        }
    }
}

#[tokio::test]
async fn the_data_directory_and_every_file_in_it_are_private() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let mut server = Server::start_process(&data, &[]);
    let mut alice = Client::connect(&server, "alice", "phone").await;
    alice
        .send_text(to_user("bob"), "m1", "a secret")
        .await
        .unwrap();
    // Files the server writes later (journal rotation, flushes at shutdown) too.
    assert!(server.terminate(), "clean shutdown");
    let mut modes = Vec::new();
    modes_under(&data, &mut modes);
    assert!(modes.iter().any(|(_, _, dir)| !dir), "no files written?");
    let open: Vec<_> = modes
        .iter()
        .filter(|(_, mode, dir)| *mode != if *dir { 0o700 } else { 0o600 })
        .collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
}
