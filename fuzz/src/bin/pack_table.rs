//! A whole pack file: header, footer and table. The same bytes are also read
//! as a bare table whose checksum the harness supplies (first 8 bytes: the
//! table's offset), since a fuzzer cannot forge the BLAKE3 in a footer and
//! would otherwise never reach the row checks.
use snapfs::format::pack::{HEADER_LEN, TableLoc, decode_pack, parse_table};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(entries) = decode_pack(data, &snapfs::format::keying::Keying::plain()) {
            for e in entries {
                assert!(e.offset >= HEADER_LEN);
                assert!(e.offset + u64::from(e.stored_len) <= data.len() as u64);
            }
        }
        let Some((offset, table)) = data.split_first_chunk::<8>() else {
            return;
        };
        let offset = u64::from_le_bytes(*offset);
        let check = blake3::hash(table).as_bytes()[..8]
            .try_into()
            .expect("8 bytes");
        let loc = TableLoc {
            offset,
            count: table.len() / 49,
        };
        if let Ok(entries) =
            parse_table(table, loc, check, &snapfs::format::keying::Keying::plain())
        {
            for e in entries {
                assert!(e.offset >= HEADER_LEN);
                let end = e.offset.checked_add(u64::from(e.stored_len));
                assert!(end.is_some_and(|end| end <= offset));
            }
        }
    });
}
