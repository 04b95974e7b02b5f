//! The kernels of the matrix: resolved through Debian's metapackages, downloaded and unpacked
//! into a cache (never installed on the host), with a small initramfs each.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::util::{run, stdout_of};

/// The active LSM list of a boot without BPF LSM (Debian's default minus `bpf`).
pub const LSM_WITHOUT_BPF: &str = "lockdown,capability,landlock,yama,apparmor";

/// Modules the initramfs loads to reach the shared root, and the block driver for the
/// guest's one disk (tests open a node's block device); built in on 6.12.
const BOOT_MODULES: &[&str] = &["virtio_pci", "virtiofs", "overlay", "virtio_blk"];

#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// What `--kernel` calls it.
    pub short: &'static str,
    /// The Debian metapackage that depends on the newest image of this series.
    pub metapackage: &'static str,
}

pub const KERNELS: &[Kernel] = &[
    Kernel { short: "6.1", metapackage: "linux-image-cloud-amd64" },
    Kernel { short: "6.12", metapackage: "linux-image-6.12-cloud-amd64" },
];

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub short: String,
    /// `uname -r` of the kernel.
    pub release: String,
    /// The cache directory: the unpacked package (`boot/`, `lib/modules/`) and runs.
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os("MOAT_VM_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/moat/vm"))
}

impl Kernel {
    pub fn selected(which: &str) -> Result<Vec<Kernel>> {
        match which {
            "all" => Ok(KERNELS.to_vec()),
            _ => KERNELS
                .iter()
                .find(|k| k.short == which)
                .map(|k| vec![*k])
                .with_context(|| format!("unknown kernel {which:?}: use 6.1, 6.12 or all")),
        }
    }

    /// Downloads and unpacks the newest image of this series unless the cache has it, and
    /// (re)builds its initramfs when the init script changed.
    pub fn prepare(&self, cache: &Path) -> Result<Prepared> {
        let package = self.resolve()?;
        let release = package.trim_start_matches("linux-image-").to_string();
        let dir = cache.join(&release);
        let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
        if !vmlinuz.is_file() || !dir.join("lib/modules").join(&release).join("modules.dep").is_file() {
            eprintln!("vm: fetching {package}");
            let download = cache.join("download");
            std::fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
            run(Command::new("apt-get").args(["download", "-q", &package]).current_dir(&download))?;
            let deb = std::fs::read_dir(&download)?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_"))))
                .with_context(|| format!("apt-get download left no {package}_*.deb in {}", download.display()))?;
            std::fs::create_dir_all(&dir)?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
            // The packages ship no modules.dep; the guest loads veth, sch_ingress, ... by name.
            run(Command::new("depmod").arg("-b").arg(&dir).arg(&release))?;
            let _ = std::fs::remove_file(&deb);
        }
        let initrd = super::initramfs::initramfs(&dir, &release, BOOT_MODULES)?;
        Ok(Prepared { short: self.short.to_string(), release, dir, vmlinuz, initrd })
    }

    /// The image package the metapackage depends on (`linux-image-6.1.0-57-cloud-amd64`).
    fn resolve(&self) -> Result<String> {
        if let Some(found) = depends_on(self.metapackage)? {
            return Ok(found);
        }
        run(Command::new("apt-get").args(["update", "-q"]))?;
        depends_on(self.metapackage)?
            .with_context(|| format!("apt-cache knows no image package behind {}", self.metapackage))
    }
}

fn depends_on(metapackage: &str) -> Result<Option<String>> {
    let text = match stdout_of(Command::new("apt-cache").args(["depends", "--no-recommends", "--no-suggests", metapackage])) {
        Ok(text) => text,
        Err(_) => return Ok(None),
    };
    let found = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|name| name.starts_with("linux-image-") && name.chars().nth(12).is_some_and(|c| c.is_ascii_digit()));
    match found {
        Some(name) => Ok(Some(name.to_string())),
        None if text.trim().is_empty() => Ok(None),
        None => bail!("{metapackage} depends on no linux-image-<version> package:\n{text}"),
    }
}
