//! Mounts the lab makes in the host's mount namespace (pod volumes, each a tmpfs under the
//! lab's directory) and their removal, found in mountinfo so a crashed lab leaves none.

use std::path::Path;

use super::{sys, LabError};
use moat_agent::node::mounts::mount_points_below;

const SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

/// Lazily unmounts every mount at or below `prefix` in this mount namespace, deepest first.
/// Returns how many were detached.
pub fn detach_below(prefix: &Path) -> Result<usize, LabError> {
    let mut points = mount_points_below(Path::new(SELF_MOUNTINFO), prefix)?;
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    points.dedup();
    let mut detached = 0;
    for point in points {
        match sys::detach(&point) {
            Ok(()) => detached += 1,
            // Already gone with a parent, or stacked mounts went together.
            Err(error) if matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
            Err(error) => return Err(LabError::io("unmounting", point, error)),
        }
    }
    Ok(detached)
}

/// Whether something is mounted exactly at `path` in this mount namespace.
pub fn is_mount_point(path: &Path) -> Result<bool, LabError> {
    Ok(mount_points_below(Path::new(SELF_MOUNTINFO), path)?.iter().any(|point| point == path))
}
