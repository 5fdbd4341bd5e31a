//! The result-code table of docs/protocol.md is the code table of `callplus_session::Code`.

use callplus_session::Code;

const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

#[test]
fn protocol_doc_lists_every_callplus_code_with_its_name() {
    // Rows look like `| 81003 | TOKEN_EXPIRED | when |`.
    let rows: Vec<(i32, &str)> = PROTOCOL_MD
        .lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix('|')?.split('|').map(str::trim);
            let number = cells.next()?.parse::<i32>().ok()?;
            Some((number, cells.next()?))
        })
        .collect();
    let ours: Vec<(i32, &str)> =
        Code::ALL.iter().filter(|c| c.number() >= 81_000).map(|c| (c.number(), c.name())).collect();
    assert!(!ours.is_empty());
    assert_eq!(rows, ours, "docs/protocol.md's result-code table differs from `Code`");
}
