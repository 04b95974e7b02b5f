//! The guest's initramfs: static busybox, the boot modules of its kernel, and the two init
//! stages that mount the host's root read-only under a tmpfs overlay and run the script.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::util::{run, stdout_of};

/// First stage (busybox): load the virtio and overlay modules, mount the host's root
/// read-only with a tmpfs overlay on top, and switch into it.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /modules/$m || echo "MOAT-VM-FAILED insmod $m"; done
mkdir -p /mnt/lower /mnt/rw /mnt/root
if ! mount -t virtiofs -o ro hostroot /mnt/lower; then echo "MOAT-VM-FAILED virtiofs"; poweroff -f; fi
mount -t tmpfs -o size=75% tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
if ! mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /mnt/root; then
  echo "MOAT-VM-FAILED overlay"; poweroff -f
fi
umount /proc /sys /dev
exec switch_root /mnt/root /bin/sh -c "$(cat /stage2)"
"#;

/// Second stage (the host's userland): the mounts a node has, loopback up, then the run
/// script named on the kernel command line; its exit status ends up on the console.
const STAGE2: &str = r#"
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t securityfs securityfs /sys/kernel/security
for w in $(cat /proc/cmdline); do
  case $w in moat.run=*) RUN=${w#moat.run=};; moat.modules=*) MODULES=${w#moat.modules=};; esac
done
mkdir -p /lib/modules && ln -sfn "$MODULES" "/lib/modules/$(uname -r)"
ip link set lo up
export PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
cd /
sh "$RUN"
echo "MOAT-VM-EXIT=$?"
echo o > /proc/sysrq-trigger
sleep 10
"#;

/// Builds (or reuses) `initrd.gz` in `dir`: static busybox, the boot modules of this kernel
/// (decompressed: busybox insmod takes plain ELF), the two init stages.
pub fn initramfs(dir: &Path, release: &str, modules: &[&str]) -> Result<PathBuf> {
    let out = dir.join("initrd.gz");
    let stamp = dir.join("initrd.stamp");
    let wanted = format!("{INIT}{STAGE2}{modules:?}");
    if out.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(out);
    }
    let tree = tempfile_dir(dir, "initrd")?;
    for sub in ["bin", "modules", "proc", "sys", "dev", "mnt"] {
        std::fs::create_dir_all(tree.join(sub))?;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox is missing (apt-get install busybox-static)");
    }
    std::fs::copy(busybox, tree.join("bin/busybox"))?;
    let mut order: Vec<String> = Vec::new();
    for module in modules {
        let depends = stdout_of(Command::new("modprobe").arg("-d").arg(dir).args(["-S", release, "--show-depends", module]))?;
        for line in depends.lines() {
            let Some(path) = line.strip_prefix("insmod ").map(|p| PathBuf::from(p.trim())) else { continue };
            let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let plain = file.trim_end_matches(".xz").trim_end_matches(".zst").to_string();
            if order.contains(&plain) {
                continue;
            }
            let target = tree.join("modules").join(&plain);
            if file.ends_with(".xz") {
                let data = crate::util::capture(Command::new("xz").arg("-dc").arg(&path))?;
                std::fs::write(&target, data.stdout)?;
            } else if file.ends_with(".zst") {
                let data = crate::util::capture(Command::new("zstd").arg("-dc").arg(&path))?;
                std::fs::write(&target, data.stdout)?;
            } else {
                std::fs::copy(&path, &target).with_context(|| format!("copying {}", path.display()))?;
            }
            order.push(plain);
        }
    }
    std::fs::write(tree.join("modules.order"), order.join("\n"))?;
    write_executable(&tree.join("init"), INIT)?;
    std::fs::write(tree.join("stage2"), STAGE2)?;
    let script = format!("cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}", shell_quote(&tree), shell_quote(&out));
    run(Command::new("sh").arg("-c").arg(script))?;
    std::fs::remove_dir_all(&tree)?;
    std::fs::write(&stamp, wanted)?;
    Ok(out)
}

fn tempfile_dir(parent: &Path, name: &str) -> Result<PathBuf> {
    let dir = parent.join(format!("{name}.{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

pub(super) fn shell_quote(path: impl AsRef<std::ffi::OsStr>) -> String {
    format!("'{}'", path.as_ref().to_string_lossy().replace('\'', r"'\''"))
}
