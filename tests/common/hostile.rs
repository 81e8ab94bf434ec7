//! Generated hostile input for `bae add`: malformed and adversarial .torrent files and
//! magnet links. Every case is deterministic for a seed. Nothing here names a host but
//! 127.0.0.1 (trackers, web seeds and peers in the inputs point at a closed local port),
//! so adding them never sends traffic off the machine.

use rand::{Rng, SeedableRng};

/// A bencoded value; `Raw` is spliced in as is (for malformed tokens).
#[derive(Clone, Debug)]
pub enum B {
    Int(i64),
    Str(Vec<u8>),
    List(Vec<B>),
    Dict(Vec<(Vec<u8>, B)>),
    Raw(Vec<u8>),
}

impl B {
    pub fn s(v: impl AsRef<[u8]>) -> B {
        B::Str(v.as_ref().to_vec())
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            B::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            B::Str(s) => {
                out.extend_from_slice(format!("{}:", s.len()).as_bytes());
                out.extend_from_slice(s);
            }
            B::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            B::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    B::Str(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
            B::Raw(r) => out.extend_from_slice(r),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

fn dict(entries: Vec<(&str, B)>) -> B {
    let mut e: Vec<(Vec<u8>, B)> = entries
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v))
        .collect();
    e.sort_by(|a, b| a.0.cmp(&b.0));
    B::Dict(e)
}

/// Replaces (or adds) `key` in a dict, keeping keys sorted.
fn set(d: &mut B, key: &str, v: B) {
    if let B::Dict(e) = d {
        e.retain(|(k, _)| k != key.as_bytes());
        e.push((key.as_bytes().to_vec(), v));
        e.sort_by(|a, b| a.0.cmp(&b.0));
    }
}

fn remove(d: &mut B, key: &str) {
    if let B::Dict(e) = d {
        e.retain(|(k, _)| k != key.as_bytes());
    }
}

fn pieces(n: u64, seed: u64) -> B {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; (n * 20) as usize];
    rng.fill(&mut v[..]);
    B::Str(v)
}

/// A plausible v1 info dict: `files` (path components, length), 16 KiB pieces.
fn info(name: &[u8], files: &[(Vec<&[u8]>, i64)], piece_len: i64, seed: u64) -> B {
    let total: i64 = files.iter().map(|f| f.1.max(0)).sum();
    // Capped: absurd declared sizes get a (wrong) short pieces field, not gigabytes.
    let n = (total as u64)
        .div_ceil(piece_len.max(1) as u64)
        .clamp(1, 100_000);
    let files = B::List(
        files
            .iter()
            .map(|(path, len)| {
                dict(vec![
                    ("length", B::Int(*len)),
                    ("path", B::List(path.iter().map(B::s).collect())),
                ])
            })
            .collect(),
    );
    dict(vec![
        ("files", files),
        ("name", B::s(name)),
        ("piece length", B::Int(piece_len)),
        ("pieces", pieces(n, seed)),
    ])
}

fn torrent(info: B) -> B {
    dict(vec![
        ("announce", B::s("http://127.0.0.1:1/announce")),
        ("info", info),
    ])
}

/// A valid small multi-file torrent, unique per `seed` (random piece hashes).
pub fn valid(seed: u64) -> B {
    torrent(info(
        format!("Hostile {seed}").as_bytes(),
        &[
            (vec![b"01 - a.flac".as_slice()], 40_000),
            (vec![b"cd2".as_slice(), b"02 - b.flac".as_slice()], 70_001),
        ],
        16384,
        seed,
    ))
}

fn with_info(seed: u64, f: impl FnOnce(&mut B)) -> Vec<u8> {
    let mut t = valid(seed);
    if let B::Dict(e) = &mut t {
        if let Some((_, v)) = e.iter_mut().find(|(k, _)| k == b"info") {
            f(v);
        }
    }
    t.bytes()
}

/// One hostile input for `bae add`.
pub enum Input {
    Torrent(String, Vec<u8>),
    Magnet(String, String),
}

impl Input {
    pub fn label(&self) -> &str {
        match self {
            Input::Torrent(l, _) | Input::Magnet(l, _) => l,
        }
    }
}

/// The hand-written cases: each kind of malformation at least once.
fn fixed(seed: u64, out: &mut Vec<Input>, full: bool) {
    let mut s = seed;
    let mut next = || {
        s += 1;
        s
    };
    let t = |label: &str, bytes: Vec<u8>| Input::Torrent(label.to_owned(), bytes);

    let good = valid(next()).bytes();
    out.push(t("valid", good.clone()));
    out.push(t("empty file", Vec::new()));
    out.push(t("not bencode", b"hello world".to_vec()));
    out.push(t(
        "trailing garbage",
        [good.clone(), b"xyz".to_vec()].concat(),
    ));
    out.push(t("lone 'd'", b"d".to_vec()));
    out.push(t("integer only", b"i42e".to_vec()));
    out.push(t("list only", b"le".to_vec()));
    out.push(t("empty dict", b"de".to_vec()));
    // Malformed tokens.
    for (label, raw) in [
        ("leading zero", &b"d4:infoi03ee"[..]),
        ("negative zero", b"d4:infoi-0ee"),
        ("empty int", b"d4:infoiee"),
        ("huge int", b"d4:infoi99999999999999999999999999999ee"),
        ("huge string length", b"d4:info99999999999999999999:abce"),
        ("negative string length", b"d4:info-1:ae"),
        ("string past end", b"d4:info100:abce"),
        ("unsorted keys", b"d1:bi1e1:ai2ee"),
        ("duplicate keys", b"d1:ai1e1:ai2ee"),
        ("non-string key", b"di1ei2ee"),
        ("unterminated dict", b"d4:info"),
        ("unterminated list", b"d4:infol"),
    ] {
        out.push(t(label, raw.to_vec()));
    }
    // Deep nesting.
    for depth in [50usize, 1_000, 100_000] {
        let mut v = b"d4:info".to_vec();
        v.extend(std::iter::repeat_n(b'l', depth));
        v.extend(std::iter::repeat_n(b'e', depth));
        v.push(b'e');
        out.push(t(&format!("lists nested {depth} deep"), v));
        let mut d = Vec::new();
        for _ in 0..depth {
            d.extend_from_slice(b"d1:a");
        }
        d.extend_from_slice(b"i1e");
        d.extend(std::iter::repeat_n(b'e', depth));
        out.push(t(&format!("dicts nested {depth} deep"), d));
    }
    // The info dict of the wrong type, missing or empty.
    out.push(t("info is a list", {
        let mut v = valid(next());
        set(&mut v, "info", B::List(vec![]));
        v.bytes()
    }));
    out.push(t("info is an int", {
        let mut v = valid(next());
        set(&mut v, "info", B::Int(7));
        v.bytes()
    }));
    out.push(t("no info", {
        let mut v = valid(next());
        remove(&mut v, "info");
        v.bytes()
    }));
    out.push(t("empty info", {
        let mut v = valid(next());
        set(&mut v, "info", B::Dict(vec![]));
        v.bytes()
    }));
    // Piece length.
    for pl in [
        0i64,
        -1,
        1,
        16383,
        48 << 10,
        100_000,
        32 << 20,
        1 << 31,
        i64::MAX,
        i64::MIN,
    ] {
        out.push(t(
            &format!("piece length {pl}"),
            with_info(next(), |i| set(i, "piece length", B::Int(pl))),
        ));
    }
    out.push(t(
        "piece length is a string",
        with_info(next(), |i| set(i, "piece length", B::s("16384"))),
    ));
    // Pieces field.
    out.push(t(
        "pieces not a multiple of 20",
        with_info(next(), |i| set(i, "pieces", B::Str(vec![1; 33]))),
    ));
    out.push(t(
        "too few pieces",
        with_info(next(), |i| set(i, "pieces", B::Str(vec![1; 20]))),
    ));
    out.push(t(
        "too many pieces",
        with_info(next(), |i| set(i, "pieces", pieces(1000, 5))),
    ));
    out.push(t("no pieces", with_info(next(), |i| remove(i, "pieces"))));
    // File lengths.
    for (label, len) in [
        ("zero-length files only", 0i64),
        ("negative length", -5),
        ("length 2^62", 1 << 62),
        ("length i64::MAX", i64::MAX),
    ] {
        let sd = next();
        out.push(t(
            label,
            torrent(info(b"len", &[(vec![b"a".as_slice()], len)], 16384, sd)).bytes(),
        ));
    }
    // A large but honest declared size (1 TiB, 16 MiB pieces): adds, or is refused
    // clearly; it must not hang or grow the library without bound.
    if full {
        let sd = next();
        out.push(t(
            "declares 1 TiB",
            torrent(info(
                b"huge",
                &[(vec![b"a".as_slice()], 1 << 40)],
                16 << 20,
                sd,
            ))
            .bytes(),
        ));
    }
    out.push(t(
        "length and files both",
        with_info(next(), |i| set(i, "length", B::Int(10))),
    ));
    out.push(t(
        "files is empty",
        with_info(next(), |i| set(i, "files", B::List(vec![]))),
    ));
    out.push(t(
        "files is a string",
        with_info(next(), |i| set(i, "files", B::s("x"))),
    ));
    out.push(t(
        "file entry is an int",
        with_info(next(), |i| set(i, "files", B::List(vec![B::Int(3)]))),
    ));
    // Hostile names and paths.
    let names: Vec<(&str, Vec<u8>)> = vec![
        ("name ..", b"..".to_vec()),
        ("name .", b".".to_vec()),
        ("empty name", Vec::new()),
        ("absolute name", b"/etc/passwd".to_vec()),
        ("name with ../", b"../../escape".to_vec()),
        ("non-UTF-8 name", vec![0xff, 0xfe, b'a', 0xc3]),
        ("NUL in name", b"a\0b".to_vec()),
        ("slash in name", b"a/b".to_vec()),
        ("backslash in name", b"..\\..\\x".to_vec()),
        ("10k-byte name", vec![b'n'; 10_000]),
        ("control characters", b"\x1b[31mred\x07".to_vec()),
    ];
    for (label, name) in &names {
        let sd = next();
        out.push(t(
            label,
            torrent(info(name, &[(vec![b"f".as_slice()], 1000)], 16384, sd)).bytes(),
        ));
        let sd = next();
        out.push(t(
            &format!("path component: {label}"),
            torrent(info(
                format!("paths {sd}").as_bytes(),
                &[(
                    vec![b"ok".as_slice(), name.as_slice(), b"f".as_slice()],
                    1000,
                )],
                16384,
                sd,
            ))
            .bytes(),
        ));
    }
    let sd = next();
    out.push(t(
        "empty path list",
        torrent(info(b"p", &[(vec![], 1000)], 16384, sd)).bytes(),
    ));
    let sd = next();
    out.push(t(
        "duplicate paths",
        torrent(info(
            format!("dup {sd}").as_bytes(),
            &[(vec![b"a".as_slice()], 100), (vec![b"a".as_slice()], 100)],
            16384,
            sd,
        ))
        .bytes(),
    ));
    let sd = next();
    out.push(t(
        "file and directory of the same name",
        torrent(info(
            format!("clash {sd}").as_bytes(),
            &[
                (vec![b"a".as_slice()], 100),
                (vec![b"a".as_slice(), b"b".as_slice()], 100),
            ],
            16384,
            sd,
        ))
        .bytes(),
    ));
    let sd = next();
    out.push(t(
        "10k path components",
        torrent(info(
            format!("deep {sd}").as_bytes(),
            &[(vec![b"d".as_slice(); 10_000], 100)],
            16384,
            sd,
        ))
        .bytes(),
    ));
    // Many files.
    let count = if full { 100_000 } else { 20_000 };
    let names: Vec<Vec<u8>> = (0..count)
        .map(|i| format!("{i:06}.flac").into_bytes())
        .collect();
    let files: Vec<(Vec<&[u8]>, i64)> = names.iter().map(|n| (vec![n.as_slice()], 1)).collect();
    let sd = next();
    out.push(t(
        &format!("{count} files"),
        torrent(info(format!("many {sd}").as_bytes(), &files, 16384, sd)).bytes(),
    ));
    // v2 and hybrid oddities.
    let v2 = |tree: B, extra: Vec<(&str, B)>| {
        let mut i = dict(vec![
            ("file tree", tree),
            ("meta version", B::Int(2)),
            ("name", B::s("v2")),
            ("piece length", B::Int(16384)),
        ]);
        for (k, v) in extra {
            set(&mut i, k, v);
        }
        dict(vec![("info", i)]).bytes()
    };
    let leaf = |len: i64| {
        dict(vec![(
            "",
            dict(vec![
                ("length", B::Int(len)),
                ("pieces root", B::Str(vec![7; 32])),
            ]),
        )])
    };
    out.push(t("v2: file tree is a list", v2(B::List(vec![]), vec![])));
    out.push(t("v2: empty file tree", v2(B::Dict(vec![]), vec![])));
    out.push(t(
        "v2: missing piece layers",
        v2(dict(vec![("a.flac", leaf(100_000))]), vec![]),
    ));
    out.push(t(
        "v2: short pieces root",
        v2(
            dict(vec![(
                "a",
                dict(vec![(
                    "",
                    dict(vec![
                        ("length", B::Int(10)),
                        ("pieces root", B::Str(vec![1; 5])),
                    ]),
                )]),
            )]),
            vec![],
        ),
    ));
    out.push(t(
        "v2: .. in file tree",
        v2(dict(vec![("..", dict(vec![("..", leaf(10))]))]), vec![]),
    ));
    out.push(t(
        "v2: meta version 3",
        v2(
            dict(vec![("a", leaf(10))]),
            vec![("meta version", B::Int(3))],
        ),
    ));
    let mut deep = leaf(10);
    for _ in 0..500 {
        deep = dict(vec![("d", deep)]);
    }
    out.push(t("v2: file tree 500 deep", v2(deep, vec![])));
    out.push(t(
        "hybrid: v1 and v2 disagree",
        with_info(next(), |i| {
            set(i, "meta version", B::Int(2));
            set(i, "file tree", dict(vec![("other", leaf(5))]));
        }),
    ));
    // Odd top-level fields (all local or unusable).
    out.push(t("web seeds and odd trackers", {
        let mut v = valid(next());
        set(
            &mut v,
            "url-list",
            B::List(vec![
                B::s("http://127.0.0.1:1/"),
                B::s("file:///etc/passwd"),
            ]),
        );
        set(
            &mut v,
            "announce-list",
            B::List(vec![B::List(vec![
                B::s("udp://127.0.0.1:1"),
                B::s("gopher://x"),
            ])]),
        );
        set(
            &mut v,
            "nodes",
            B::List(vec![B::List(vec![B::s("127.0.0.1"), B::Int(1)])]),
        );
        v.bytes()
    }));

    // Magnet links.
    let m = |label: &str, uri: String| Input::Magnet(label.to_owned(), uri);
    let hex40 = |n: u64| format!("{:040x}", u128::from(n) * 0x9e37_79b9_7f4a_7c15);
    out.push(m(
        "magnet: valid",
        format!("magnet:?xt=urn:btih:{}", hex40(next())),
    ));
    out.push(m("magnet: bare", "magnet:".into()));
    out.push(m("magnet: only ?", "magnet:?".into()));
    out.push(m("magnet: empty xt", "magnet:?xt=".into()));
    out.push(m(
        "magnet: no xt",
        "magnet:?dn=x&tr=http%3A%2F%2F127.0.0.1%3A1%2Fannounce".into(),
    ));
    out.push(m("magnet: short hash", "magnet:?xt=urn:btih:abcd".into()));
    out.push(m(
        "magnet: 41 hex digits",
        format!("magnet:?xt=urn:btih:{}f", hex40(next())),
    ));
    out.push(m(
        "magnet: non-hex",
        format!("magnet:?xt=urn:btih:{}", "z".repeat(40)),
    ));
    out.push(m(
        "magnet: base32",
        format!("magnet:?xt=urn:btih:{}", "A".repeat(32)),
    ));
    out.push(m(
        "magnet: bad base32",
        format!("magnet:?xt=urn:btih:{}", "1".repeat(32)),
    ));
    out.push(m("magnet: bad btmh", "magnet:?xt=urn:btmh:1220zz".into()));
    out.push(m(
        "magnet: short btmh",
        "magnet:?xt=urn:btmh:1220abcd".into(),
    ));
    out.push(m(
        "magnet: two different xt",
        format!(
            "magnet:?xt=urn:btih:{}&xt=urn:btih:{}",
            hex40(next()),
            hex40(next())
        ),
    ));
    out.push(m(
        "magnet: dn with ..",
        format!("magnet:?xt=urn:btih:{}&dn=..%2F..%2Fescape", hex40(next())),
    ));
    out.push(m(
        "magnet: dn non-UTF-8",
        format!("magnet:?xt=urn:btih:{}&dn=%FF%FE%C3", hex40(next())),
    ));
    out.push(m(
        "magnet: dn with NUL",
        format!("magnet:?xt=urn:btih:{}&dn=a%00b", hex40(next())),
    ));
    out.push(m(
        "magnet: truncated escape",
        format!("magnet:?xt=urn:btih:{}&dn=%", hex40(next())),
    ));
    out.push(m(
        "magnet: bad escape",
        format!("magnet:?xt=urn:btih:{}&dn=%zz", hex40(next())),
    ));
    out.push(m(
        "magnet: 100k-byte dn",
        format!(
            "magnet:?xt=urn:btih:{}&dn={}",
            hex40(next()),
            "n".repeat(100_000)
        ),
    ));
    out.push(m(
        "magnet: bad peers",
        format!(
            "magnet:?xt=urn:btih:{}&x.pe=notapeer&x.pe=127.0.0.1:99999&x.pe=[::1&x.pe=127.0.0.1:1",
            hex40(next())
        ),
    ));
    out.push(m(
        "magnet: 2000 trackers",
        format!(
            "magnet:?xt=urn:btih:{}{}",
            hex40(next()),
            "&tr=http%3A%2F%2F127.0.0.1%3A1%2Fannounce".repeat(2000)
        ),
    ));
    out.push(m(
        "magnet: 20k empty params",
        format!("magnet:?{}", "&".repeat(20_000)),
    ));
    out.push(m(
        "magnet: so=file selection garbage",
        format!(
            "magnet:?xt=urn:btih:{}&so=1-,-5,99999999999999999999",
            hex40(next())
        ),
    ));
}

/// Random damage to a valid torrent: truncation, byte flips, spliced tokens.
fn mutated(rng: &mut rand::rngs::StdRng, i: u64) -> Input {
    let base = valid(1_000_000 + i).bytes();
    let mut v = base.clone();
    let kind = rng.random_range(0..4);
    let label = match kind {
        0 => {
            let at = rng.random_range(0..v.len());
            v.truncate(at);
            format!("truncated at {at}")
        }
        1 => {
            let flips = rng.random_range(1..8);
            for _ in 0..flips {
                let at = rng.random_range(0..v.len());
                v[at] = rng.random();
            }
            format!("{flips} random bytes")
        }
        2 => {
            let tokens: [&[u8]; 8] = [
                b"i99999999999999999999999e",
                b"i-1e",
                b"0:",
                b"4294967296:",
                b"le",
                b"de",
                b"e",
                b"d",
            ];
            let tok = tokens[rng.random_range(0..tokens.len())];
            let at = rng.random_range(0..v.len());
            v.splice(at..at, tok.iter().copied());
            format!("token {:?} spliced at {at}", String::from_utf8_lossy(tok))
        }
        _ => {
            let from = rng.random_range(0..v.len());
            let to = rng.random_range(from..v.len());
            v.drain(from..to);
            format!("bytes {from}..{to} cut out")
        }
    };
    Input::Torrent(label, v)
}

/// Random damage to a valid magnet link.
fn mutated_magnet(rng: &mut rand::rngs::StdRng, i: u64) -> Input {
    let mut uri = format!(
        "magnet:?xt=urn:btih:{:040x}&dn=Album%20{i}&tr=http%3A%2F%2F127.0.0.1%3A1%2Fannounce",
        u128::from(i + 77) * 0x9e37_79b9_7f4a_7c15
    )
    .into_bytes();
    let flips = rng.random_range(1..5);
    for _ in 0..flips {
        let at = rng.random_range(8..uri.len());
        // Printable ASCII keeps it a plausible command-line argument.
        uri[at] = rng.random_range(0x21..0x7f);
    }
    Input::Magnet(
        format!("magnet with {flips} changed bytes"),
        String::from_utf8(uri).unwrap(),
    )
}

/// `count` hostile inputs (at least the hand-written set) for `seed`.
pub fn inputs(count: usize, seed: u64, full: bool) -> Vec<Input> {
    let mut out = Vec::new();
    fixed(seed, &mut out, full);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut i = 0;
    while out.len() < count {
        i += 1;
        if rng.random_range(0..5) == 0 {
            out.push(mutated_magnet(&mut rng, i));
        } else {
            out.push(mutated(&mut rng, i));
        }
    }
    out
}

/// A well-formed torrent of one file declaring `len` bytes (random piece hashes: its
/// data never arrives), for what a large declared size costs before any byte does.
pub fn declaring(name: &str, len: i64, piece_len: i64, seed: u64) -> Vec<u8> {
    torrent(info(
        name.as_bytes(),
        &[(vec![b"01 - Everything.flac".as_slice()], len)],
        piece_len,
        seed,
    ))
    .bytes()
}
