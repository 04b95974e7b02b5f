//! `GUARD_DEVICES`: the filesystems the guard knows, derived from the protected files and the
//! pods' own volumes. The file-open programs look a file's filesystem up first and stop there
//! when it is unknown, so every map write keeps this invariant: while a `GUARD_FILES` entry
//! is in the kernel, its filesystem is marked `DEVICE_HOLDS_FILES` (else that file would go
//! unseen).

use std::collections::BTreeMap;

use moat_common::guard::{DeviceRule, FileKey, FileRule, DEVICE_HOLDS_FILES, DEVICE_POD_VOLUME};

/// The devices for `files` and `volumes` (superblock → owning pod's tag).
pub fn devices(files: &BTreeMap<FileKey, FileRule>, volumes: &BTreeMap<u64, u64>) -> BTreeMap<u64, DeviceRule> {
    let mut out: BTreeMap<u64, DeviceRule> = BTreeMap::new();
    for key in files.keys() {
        out.entry(key.dev).or_default().flags |= DEVICE_HOLDS_FILES;
    }
    for (dev, owner) in volumes {
        let rule = out.entry(*dev).or_default();
        rule.flags |= DEVICE_POD_VOLUME;
        rule.owner = *owner;
    }
    out
}

/// What to write before the files change from `written` to the next set: `next`, with every
/// filesystem that holds a file still in the kernel kept marked, so no file written or still
/// present is ever on an unmarked filesystem. Written exactly (`next`) once the files are.
pub fn during_change(written: &BTreeMap<u64, DeviceRule>, next: &BTreeMap<u64, DeviceRule>) -> BTreeMap<u64, DeviceRule> {
    let mut out = next.clone();
    for (dev, rule) in written {
        if rule.flags & DEVICE_HOLDS_FILES != 0 {
            out.entry(*dev).or_default().flags |= DEVICE_HOLDS_FILES;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_common::guard::{FILE_KUBELET_CREDENTIAL, FILE_POD_VOLUME};

    fn file(dev: u64, ino: u64) -> (FileKey, FileRule) {
        (FileKey { dev, ino }, FileRule { class: FILE_KUBELET_CREDENTIAL, _pad: 0, owner: 0 })
    }

    #[test]
    fn marks_filesystems_of_files_and_volumes() {
        let files = BTreeMap::from([file(8, 1), file(8, 2), (FileKey { dev: 9, ino: 3 }, FileRule { class: FILE_POD_VOLUME, _pad: 0, owner: 77 })]);
        let volumes = BTreeMap::from([(40, 5), (9, 6)]);
        let out = devices(&files, &volumes);
        assert_eq!(out.len(), 3);
        assert_eq!(out[&8], DeviceRule { flags: DEVICE_HOLDS_FILES, _pad: 0, owner: 0 });
        assert_eq!(out[&9], DeviceRule { flags: DEVICE_HOLDS_FILES | DEVICE_POD_VOLUME, _pad: 0, owner: 6 });
        assert_eq!(out[&40], DeviceRule { flags: DEVICE_POD_VOLUME, _pad: 0, owner: 5 });
    }

    #[test]
    fn a_filesystem_stays_marked_until_its_files_are_gone() {
        // Files move from dev 8 to dev 9 (a kubelet root on a new disk); a volume goes.
        let written = devices(&BTreeMap::from([file(8, 1)]), &BTreeMap::from([(40, 5)]));
        let next = devices(&BTreeMap::from([file(9, 1)]), &BTreeMap::new());
        let during = during_change(&written, &next);
        assert_eq!(during[&8].flags, DEVICE_HOLDS_FILES, "dev 8 still holds a file until the files are synced");
        assert_eq!(during[&9].flags, DEVICE_HOLDS_FILES, "dev 9 is marked before its file is written");
        assert!(!during.contains_key(&40), "a volume's mark has no file behind it: dropped at once");
        assert_eq!(devices(&BTreeMap::from([file(9, 1)]), &BTreeMap::new()), next);
    }
}
