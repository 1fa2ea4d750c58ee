//! Every normalisation view of an arbitrary value: no panic, bounded output, the documented
//! shape of each view, and no state leaking from one value to the next.

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use portcullis_waf::transform::{View, Views};

thread_local! {
    /// Reused across inputs, as the engine reuses it across values.
    static REUSED: RefCell<Views> = RefCell::new(Views::new());
}

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    let mut fresh = Views::new();
    fresh.load(&value);
    let expected: Vec<String> = View::ALL
        .iter()
        .map(|&v| fresh.get(v).to_string())
        .collect();

    assert_eq!(expected[0], value);
    assert!(expected[1].len() <= value.len() * 3 + 3);
    assert!(
        !expected[1]
            .chars()
            .any(|c| c.is_control() && !c.is_whitespace())
    );
    for s in &expected[2..5] {
        assert!(!s.starts_with(' ') && !s.ends_with(' ') && !s.contains("  "));
        assert!(!s.bytes().any(|b| b.is_ascii_uppercase()));
    }
    assert!(!expected[5].contains('\\') && !expected[5].contains("//"));

    // Same answers, in another order, from buffers that held the previous input.
    REUSED.with(|r| {
        let mut views = r.borrow_mut();
        views.load(&value);
        for (i, v) in View::ALL.iter().enumerate().rev() {
            assert_eq!(views.get(*v), expected[i]);
        }
    });
});
