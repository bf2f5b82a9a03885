//! Every harness over its checked-in corpus (`fuzz/corpus/<target>/`), and over pseudo-random
//! inputs from a fixed seed: the fuzz targets' checks on the stable toolchain, no libFuzzer.

use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn run_corpus(target: &str, f: fn(&[u8])) {
    let dir = corpus_dir(target);
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let data = std::fs::read(&path).expect("corpus file");
        eprintln!("{target}: {}", path.display());
        f(&data);
        n += 1;
    }
    assert!(n > 0, "corpus {} is empty", dir.display());
    eprintln!("{target}: {n} corpus inputs passed");
}

/// xorshift64*: inputs from a fixed seed, the same on every run.
fn random_inputs(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut x = seed;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..count)
        .map(|_| {
            let len = (next() % max_len as u64) as usize;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

macro_rules! target_tests {
    ($name:ident, $corpus:ident, $random:ident) => {
        #[test]
        fn $corpus() {
            run_corpus(stringify!($name), microvm_fuzz::$name::run);
        }

        #[test]
        fn $random() {
            for (i, data) in random_inputs(0x5eed ^ stringify!($name).len() as u64, 300, 4096)
                .iter()
                .enumerate()
            {
                let r = std::panic::catch_unwind(|| microvm_fuzz::$name::run(data));
                if r.is_err() {
                    let path =
                        std::env::temp_dir().join(format!("{}-crash-{i}", stringify!($name)));
                    std::fs::write(&path, data).unwrap();
                    panic!("input {i} failed; saved to {}", path.display());
                }
            }
        }
    };
}

target_tests!(blk, blk_corpus, blk_random);
target_tests!(net, net_corpus, net_random);
target_tests!(mmio, mmio_corpus, mmio_random);
target_tests!(dma, dma_corpus, dma_random);

/// `FUZZ_REPLAY=blk:/path/to/input cargo test -p microvm-fuzz --test corpus replay -- --nocapture`
/// prints the decoded input and runs it (a crash from `cargo fuzz`, or one saved above).
#[test]
fn replay() {
    let Ok(spec) = std::env::var("FUZZ_REPLAY") else {
        return;
    };
    let (target, path) = spec.split_once(':').expect("FUZZ_REPLAY=target:path");
    let data = std::fs::read(path).expect("input");
    let u = arbitrary::Unstructured::new(&data);
    match target {
        "blk" => eprintln!(
            "{:#?}",
            <microvm_fuzz::blk::Input as arbitrary::Arbitrary>::arbitrary_take_rest(u)
        ),
        "net" => eprintln!(
            "{:#?}",
            <microvm_fuzz::net::Input as arbitrary::Arbitrary>::arbitrary_take_rest(u)
        ),
        "mmio" => eprintln!(
            "{:#?}",
            <microvm_fuzz::mmio::Input as arbitrary::Arbitrary>::arbitrary_take_rest(u)
        ),
        "dma" => eprintln!(
            "{:#?}",
            <microvm_fuzz::dma::Input as arbitrary::Arbitrary>::arbitrary_take_rest(u)
        ),
        t => panic!("unknown target {t}"),
    }
    let f = microvm_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .expect("target")
        .1;
    f(&data);
}
