//! No input makes the parser panic: truncations, mutations and garbage all end in Ok or Err.

use super::parse;

const SEED_TEXT: &str = include_str!("../../../../policy/example.toml");

/// xorshift64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn every_truncation_of_a_valid_file() {
    let mut ends: Vec<usize> = (0..=SEED_TEXT.len())
        .filter(|&i| SEED_TEXT.is_char_boundary(i))
        .collect();
    ends.dedup();
    let mut ok = 0;
    for end in ends {
        if parse(&SEED_TEXT[..end]).is_ok() {
            ok += 1;
        }
    }
    // The whole file needs nova/netops, which the test accounts lack, so only some prefixes
    // (those that stop before the roles that name them) can load.
    assert!(ok > 0);
}

#[test]
fn random_mutations_of_a_valid_file() {
    let alphabet: &[u8] = b"[]{}=\"',.#\n -_0x19azAZ*\\\t";
    let mut rng = Rng(0x5eed_acce_1234_5678);
    for _ in 0..3000 {
        let mut bytes = SEED_TEXT.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[at] = alphabet[rng.below(alphabet.len())],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, alphabet[rng.below(alphabet.len())]),
            }
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = parse(text);
        }
    }
}

#[test]
fn garbage() {
    let inputs = [
        "",
        "\0",
        "[[[",
        "]]",
        "=",
        "device = 1",
        "device = [1, 2]",
        "[[device]]",
        "[[device]]\n[[device.slice]]",
        "[device]\nid = \"x\"",
        "[[role]]\noperations = \"*\"",
        "[[role]]\nid = 1\nusers = [[]]\noperations = [[\"*\"]]",
        "[[device]]\nid=\"a\"\npci=\"0000:00:00.0\"\nkind=\"k\"\nslice = 3",
        "[[device]]\nid=\"a\"\npci=\"0000:00:00.0\"\nkind=\"k\"\n[[device.slice]]\nwritable = [[1]]",
        "[[device]]\nid=\"a\"\npci=\"0000:00:00.0\"\nkind=\"k\"\n[device.vfs]\nmax = 99999999999999999999",
        "[[role]]\nid=\"r\"\nusers=[1]\noperations=[\"*\"]\ncaller_caps = { \"*\" = [\"CAP_IPC_LOCK\"] }",
        "[[role]]\nid=\"r\"\nusers=[1]\noperations=[\"*\"]\ncaller_caps = 5",
        "\u{feff}[[role]]",
        "a = \"\u{1F600}\"\n\u{1F600} = 1",
    ];
    for input in inputs {
        assert!(
            parse(input).is_err() || input.is_empty(),
            "{input:?} loaded"
        );
    }
    let mut rng = Rng(42);
    for len in 0..400 {
        let bytes: Vec<u8> = (0..len).map(|_| (rng.next() & 0x7f) as u8).collect();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = parse(text);
        }
    }
}

#[test]
fn deep_nesting_and_huge_inputs() {
    for depth in [1_000, 100_000] {
        let _ = parse(&format!("a = {}", "[".repeat(depth)));
        let _ = parse(&format!("a = {}1{}", "[".repeat(depth), "]".repeat(depth)));
        let _ = parse(&format!("a = {}", "{ b = ".repeat(depth)));
        let _ = parse(&format!(
            "[[role]]\nid = \"r\"\nusers = {}",
            "[".repeat(depth)
        ));
    }
    let _ = parse(&"[[device]]\n".repeat(20_000));
    let _ = parse(&format!("{}x", "#".repeat(1 << 20)));
}
