//! SPEC.md's frame-type and error-code tables say exactly what the .proto files (and the Rust
//! code generated from them) say: same names, numbers, bodies, directions and error properties.

use std::collections::BTreeMap;

use im_protocol::pb::ErrorCode;
use im_protocol::{Direction, ErrorCodeExt as _, OP_TABLE};

const SPEC: &str = include_str!("../SPEC.md");

/// The cells of every table row whose header row starts with `first_header`.
fn table_rows(first_header: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in SPEC.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_owned())
            .collect();
        if cells.first().map(String::as_str) == Some(first_header) {
            in_table = true;
            continue;
        }
        if in_table && !cells[0].starts_with("---") {
            rows.push(cells);
        }
    }
    rows
}

#[test]
fn frame_type_table_matches_the_proto() {
    let rows = table_rows("Op");
    let spec: BTreeMap<String, (i32, String, String)> = rows
        .iter()
        .map(|c| {
            (
                c[0].clone(),
                (c[1].parse().expect("number"), c[2].clone(), c[3].clone()),
            )
        })
        .collect();
    assert_eq!(spec.len(), rows.len(), "an op is listed twice in SPEC.md");
    let proto: BTreeMap<String, (i32, String, String)> = OP_TABLE
        .iter()
        .map(|info| {
            let direction = match info.direction {
                Direction::ClientToServer => "c2s",
                Direction::ServerToClient => "s2c",
                Direction::Both => "both",
            };
            (
                info.proto_name.to_owned(),
                (info.number, info.body.to_owned(), direction.to_owned()),
            )
        })
        .collect();
    assert_eq!(
        spec, proto,
        "SPEC.md frame-type table differs from enum Op in frame.proto"
    );
}

#[test]
fn error_code_table_matches_the_proto() {
    let rows = table_rows("Code");
    assert!(!rows.is_empty(), "SPEC.md has no error-code table");
    let mut spec = BTreeMap::new();
    for c in &rows {
        let yes_no = |s: &str| match s {
            "yes" => true,
            "no" => false,
            other => panic!("expected yes/no, got {other:?} in row {c:?}"),
        };
        let number: i32 = c[0].parse().expect("numeric code");
        assert!(
            spec.insert(number, (c[1].clone(), yes_no(&c[2]), yes_no(&c[3])))
                .is_none()
        );
    }
    let mut proto = BTreeMap::new();
    for number in 1..1000 {
        if let Ok(code) = ErrorCode::try_from(number) {
            proto.insert(
                number,
                (
                    code.as_str_name().to_owned(),
                    code.retryable(),
                    code.closes_connection(),
                ),
            );
        }
    }
    assert_eq!(
        spec, proto,
        "SPEC.md error table differs from ErrorCode / errors.rs"
    );
}
