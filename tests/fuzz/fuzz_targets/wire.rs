//! The command parser never panics, and the DATA scanner gives the same result whatever
//! way its input is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmx::wire::{BareLinePolicy, DataScanner, DataStatus, parse_command};

fuzz_target!(|data: &[u8]| {
    let _ = parse_command(data);
    if data.is_empty() {
        return;
    }
    let cut = data[0] as usize % data.len();
    let input = &data[1..];
    let run = |pieces: &[&[u8]]| {
        let mut s = DataScanner::new(BareLinePolicy::Allow);
        let mut out = Vec::new();
        let mut used = 0;
        for p in pieces {
            let r = s.feed(p, &mut out);
            used += r.consumed;
            if r.status == DataStatus::Done {
                return (out, used, true, s.saw_bare_line_ending());
            }
        }
        (out, used, false, s.saw_bare_line_ending())
    };
    let cut = cut.min(input.len());
    assert_eq!(run(&[input]), run(&[&input[..cut], &input[cut..]]));
});
