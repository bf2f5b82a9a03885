//! The setup scripts under resources/, run the way a fresh machine runs them.

use std::path::Path;
use std::process::Command;

/// `install-deps.sh --print-mirror` with apt's sources in `etc`: its status and output.
fn mirror(etc: &Path) -> (Option<i32>, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/install-deps.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-mirror")
        .env("MICROVM_APT_ETC", etc)
        .output()
        .expect("run install-deps.sh");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// bookworm-backports comes from the archive the machine already uses, whichever file names
/// it: a machine with deb822 sources only (no sources.list, as this project's CI machines)
/// once ended install-deps.sh with status 2 and no message.
#[test]
fn install_deps_finds_the_debian_mirror_in_either_sources_format() {
    let etc = std::env::temp_dir().join(format!("microvm-apt-etc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&etc);
    std::fs::create_dir_all(etc.join("sources.list.d")).expect("temp dir");
    let w = |name: &str, text: &str| std::fs::write(etc.join(name), text).expect("write");

    assert_eq!(
        mirror(&etc),
        (Some(0), "http://deb.debian.org/debian\n".into()),
        "no sources at all: Debian's own archive"
    );
    w(
        "sources.list.d/debian.sources",
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n\n\
         Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n",
    );
    assert_eq!(
        mirror(&etc),
        (Some(0), "http://mirror.example/debian\n".into()),
        "deb822 only"
    );
    std::fs::remove_file(etc.join("sources.list.d/debian.sources")).expect("rm");
    w(
        "sources.list",
        "deb http://other.example/debian bookworm main\n",
    );
    assert_eq!(
        mirror(&etc),
        (Some(0), "http://other.example/debian\n".into()),
        "sources.list only"
    );
    let _ = std::fs::remove_dir_all(&etc);
}
