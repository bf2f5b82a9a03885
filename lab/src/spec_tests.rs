use super::*;

const GOOD: &str = r#"
name = "t"
repetitions = 2
runtime_s = 2
[matrix]
pool = ["off", "1M", "4M"]
exhaustion = ["fail", "transient"]
[[workload]]
name = "rr4k"
rw = "randread"
bs = "4k"
engine = "psync"
[[workload]]
name = "rw64k-qd32"
rw = "randwrite"
bs = "64k"
iodepth = 32
engine = "libaio"
"#;

fn err(text: &str) -> String {
    Spec::parse(text, "s.toml").unwrap_err().to_string()
}

#[test]
fn a_good_spec_expands_to_its_matrix() {
    let s = Spec::parse(GOOD, "s.toml").unwrap();
    let configs = s.configs();
    // "off" collapses the pool knobs: 1 baseline + 2 sizes x 2 policies.
    assert_eq!(configs.len(), 5);
    assert!(!configs[0].bounced());
    let cells = s.cells();
    assert_eq!(cells.len(), 5 * 2 * 2);
    let ids: BTreeSet<String> = cells.iter().map(Cell::id).collect();
    assert_eq!(ids.len(), cells.len(), "cell ids are unique");
    assert_eq!(cells[0].rep, 0);
    assert_eq!(cells.last().unwrap().rep, 1);
    let c = &configs[1];
    assert_eq!(
        c.microvm_args(""),
        vec![
            "--cpus",
            "1",
            "--restricted-dma=1M",
            "--bounce",
            "growth=linux,exhaustion=fail,convert=none,lookup=list"
        ]
    );
    assert_eq!(
        cells[1].id(),
        "pool=off,growth=-,exhaustion=-,convert=-,lookup=-,areas=0,cpus=1,guest-swiotlb=0|rw64k-qd32|rep0"
    );
}

#[test]
fn bad_specs_say_what_is_wrong() {
    assert!(err("name = \"x\"").contains("missing field"));
    assert!(err(&GOOD.replace("repetitions = 2", "repetitions = 2\nbogus = 1")).contains("bogus"));
    assert!(err(&GOOD.replace("\"4M\"]", "\"4Q\"]")).contains("matrix.pool"));
    let e = err(&GOOD.replace(
        "exhaustion = [\"fail\", \"transient\"]",
        "exhaustion = [\"sometimes\"]",
    ));
    assert!(e.contains("exhaustion") && e.contains("sometimes"), "{e}");
    let e = err(&GOOD.replace("[matrix]", "[matrix]\nconvert = [\"sev\"]"));
    assert!(e.contains("sev"), "{e}");
    let e = err(&GOOD.replace("engine = \"libaio\"", "engine = \"psync\""));
    assert!(e.contains("iodepth") && e.contains("psync"), "{e}");
    assert!(err(&GOOD.replace("\"randread\"", "\"sideways\"")).contains("rw"));
    assert!(err(&GOOD.replace("bs = \"4k\"", "bs = \"100\"")).contains("bs"));
    assert!(err(&GOOD.replace("name = \"rw64k-qd32\"", "name = \"rr4k\"")).contains("twice"));
    assert!(err(&GOOD.replace("repetitions = 2", "repetitions = 0")).contains("repetitions"));
    assert!(
        err(&GOOD.replace("[matrix]", "metrics_interval = \"1ms\"\n[matrix]"))
            .contains("metrics_interval")
    );
    assert!(err(&GOOD.replace("[matrix]", "[matrix]\ncpus = []")).contains("matrix.cpus"));
    let no_workloads = GOOD.split("[[workload]]").next().unwrap().to_string();
    assert!(err(&no_workloads).contains("workload"));
}

#[test]
fn sizes_and_intervals() {
    assert_eq!(parse_size("4k"), Ok(4096));
    assert_eq!(parse_size("1M"), Ok(1 << 20));
    assert_eq!(parse_size("2g"), Ok(2 << 30));
    assert!(parse_size("x").is_err());
    assert_eq!(parse_interval("250ms"), Ok(250));
    assert_eq!(parse_interval("2s"), Ok(2000));
    assert!(parse_interval("5ms").is_err());
    assert!(parse_interval("fast").is_err());
}

#[test]
fn the_example_specs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            Spec::load(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 2, "example specs in {}", dir.display());
}

#[test]
fn net_workloads_are_checked() {
    let base =
        "name = \"t\"\n[matrix]\npool = [\"off\"]\n[[workload]]\nname = \"n\"\nkind = \"net\"\n";
    assert!(Spec::parse(&format!("{base}direction = \"down\"\n"), "s").is_ok());
    assert!(err(&format!("{base}direction = \"sideways\"\n")).contains("down or up"));
    assert!(err(&format!("{base}direction = \"up\"\nsize = \"1K\"\n")).contains("64K..=1G"));
    assert!(err(&format!("{base}direction = \"up\"\nrw = \"read\"\n")).contains("not fio's"));
    let other =
        "name = \"t\"\n[matrix]\npool = [\"off\"]\n[[workload]]\nname = \"n\"\nkind = \"gpu\"\n";
    assert!(err(other).contains("fio or net"));
}
