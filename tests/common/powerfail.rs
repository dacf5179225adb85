//! The power-cut file system (`tools/powerfail`) as tests use it: mount a
//! backing directory, run a server on it, cut the power, mount it again.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The `powerfail` binary, built on first use in the profile the tests
/// were built in (a no-op when `scripts/test` built it already).
pub fn binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile_dir = Path::new(env!("CARGO_BIN_EXE_dododb"))
            .parent()
            .expect("the binary's directory");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "powerfail"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build -p powerfail");
        assert!(status.success(), "cargo build -p powerfail failed");
        profile_dir.join("powerfail")
    })
}

/// A mounted power-cut file system.
pub struct PowerFs {
    pub mountpoint: PathBuf,
    child: Option<Child>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl PowerFs {
    /// Mounts `backing` at `mountpoint`; `torn`: a seed for torn writes.
    pub fn mount(backing: &Path, mountpoint: &Path, torn: Option<u64>) -> PowerFs {
        std::fs::create_dir_all(backing).expect("backing dir");
        std::fs::create_dir_all(mountpoint).expect("mountpoint");
        let mut command = Command::new(binary());
        command
            .arg(backing)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(seed) = torn {
            command.arg("--torn").arg(seed.to_string());
        }
        let mut child = command.spawn().expect("spawn powerfail");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("powerfail stdout");
        let stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
            text
        });
        let mut fs = PowerFs {
            mountpoint: mountpoint.to_path_buf(),
            child: Some(child),
            stderr: Some(stderr),
        };
        if !line.starts_with("mounted ") {
            let said = fs.stop_and_read();
            panic!("powerfail did not mount: {line:?} {said}");
        }
        fs
    }

    /// Cuts the power and waits until the mount is gone; returns what the
    /// file system said it lost (its stderr).
    pub fn cut(&mut self) -> String {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args(["-USR1", &child.id().to_string()])
                .status()
                .expect("kill -USR1");
            assert!(status.success());
        }
        let said = self.stop_and_read();
        assert!(said.contains("powerfail: cut"), "no cut happened: {said}");
        said
    }

    fn stop_and_read(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            // The cut ends the process by itself; a stuck one is killed.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        detach(&self.mountpoint);
        self.stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        detach(&self.mountpoint);
    }
}

/// Lazily unmounts `mountpoint` if anything is still mounted there.
fn detach(mountpoint: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = mountpoint.to_string_lossy();
    if mounts.lines().any(|l| l.split(' ').nth(1) == Some(&path)) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(mountpoint)
            .stderr(Stdio::null())
            .status();
    }
}
