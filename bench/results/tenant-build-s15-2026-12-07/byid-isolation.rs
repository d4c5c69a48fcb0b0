// The user-id table in isolation (a scratch crate: foldhash 0.2, mimalloc 0.1 with no_thp, release,
// codegen-units 1). `byid 0`: the Box<str> made between inserts (the build before c36c11b);
// `byid 1`: the keys made first, then inserted; `byid 2`: a lookup, then an insert when absent.
use std::collections::HashMap;
use std::time::Instant;
#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn main() {
    let v: u32 = std::env::args().nth(1).unwrap().parse().unwrap();
    let n = 1_000_000usize;
    let text: String = (0..n).map(|i| format!("u{i},")).collect();
    let ids: Vec<&str> = text.split(',').filter(|s| !s.is_empty()).collect();
    let t = Instant::now();
    let mut m: HashMap<Box<str>, u32, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(n, Default::default());
    match v {
        0 => for (i, id) in ids.iter().enumerate() { m.insert((*id).into(), i as u32); },
        1 => { let boxes: Vec<Box<str>> = ids.iter().map(|s| (*s).into()).collect();
               for (i, b) in boxes.into_iter().enumerate() { m.insert(b, i as u32); } }
        _ => for (i, id) in ids.iter().enumerate() { if !m.contains_key(*id) { m.insert((*id).into(), i as u32); } },
    }
    println!("variant {v}: {:?} {}", t.elapsed(), m.len());
}
