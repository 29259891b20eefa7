//! The memory cgroup of a process: where it is, and its usage, working set and limit.
//!
//! Both hierarchies are handled. Under cgroup v1 the memory controller has its own hierarchy
//! (`4:memory:/system.slice/kafka.service` in /proc/PID/cgroup; `memory.usage_in_bytes`,
//! `memory.limit_in_bytes`); under v2 there is one (`0::/system.slice/kafka.service`;
//! `memory.current`, `memory.max`). The hybrid layout has both, and there the memory
//! controller is the v1 one. Mount points come from /proc/self/mountinfo rather than being
//! assumed at /sys/fs/cgroup, and a mount of a subtree (a container's bind mount of its own
//! cgroup) is resolved as the kernel does: the path in /proc/PID/cgroup less the mount's
//! root.
//!
//! A cgroup often has no limit of its own while its parent has one (a Kubernetes pod's limit
//! sits on the pod cgroup, above the container's), so the limit is the smallest one found
//! walking up to the top of the mount.

use std::{
    ffi::OsStr,
    fmt::Display,
    io,
    num::ParseIntError,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

/// Which cgroup hierarchy holds the memory controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    /// A v1 hierarchy with the `memory` controller.
    V1,
    /// The unified v2 hierarchy.
    V2,
}

impl CgroupVersion {
    /// "v1" or "v2", for JSON and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }

    /// The file holding the cgroup's memory usage in bytes.
    fn usage_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        }
    }

    /// The file holding the cgroup's hard limit.
    fn limit_file(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        }
    }

    /// The `memory.stat` key of the inactive file cache, the cgroup's and its descendants'.
    fn inactive_file_key(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "total_inactive_file",
            CgroupVersion::V2 => "inactive_file",
        }
    }
}

/// The memory cgroup of a process, as seen from our mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryCgroup {
    pub version: CgroupVersion,
    /// The cgroup's directory, e.g. "/sys/fs/cgroup/memory/system.slice/kafka.service".
    pub dir: PathBuf,
    /// The mount point of the hierarchy `dir` is under: the walk up for a limit stops there.
    pub mount: PathBuf,
}

/// A memory cgroup's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMemory {
    /// Memory charged to the cgroup, page cache included.
    pub usage_bytes: u64,
    /// Usage less the inactive file cache, floored at 0: what the kernel cannot easily
    /// reclaim, so what counts towards an OOM kill (kubelet's "working set").
    pub working_set_bytes: u64,
    /// The smallest hard limit of the cgroup and its ancestors up to the mount; `None` when
    /// none is set (v2 "max"; v1 values of 2^62 and above, the kernel's `PAGE_COUNTER_MAX` in
    /// bytes).
    pub limit_bytes: Option<u64>,
    /// The cgroup directory that holds `limit_bytes`: `dir` itself or an ancestor.
    pub limit_dir: Option<PathBuf>,
}

impl MemoryCgroup {
    /// Finds the memory cgroup of `pid`: its line in `/proc/{pid}/cgroup`, resolved against
    /// the cgroup mounts in `/proc/self/mountinfo`. `None` when the process has no memory
    /// cgroup we can read: no memory controller, no mount of its hierarchy that shows the
    /// process's cgroup, or no usage file there (the v2 root cgroup has none).
    ///
    /// # Errors
    ///
    /// When `/proc/{pid}/cgroup` (the process has exited: `NotFound`) or
    /// `/proc/self/mountinfo` cannot be read.
    pub fn find(pid: u32) -> io::Result<Option<MemoryCgroup>> {
        let cgroups = read_lossy(format!("/proc/{pid}/cgroup"))?;
        let Some((version, path)) = parse_proc_cgroup(&cgroups) else {
            return Ok(None);
        };
        let mountinfo = read_lossy("/proc/self/mountinfo")?;
        Ok(candidates(&mountinfo, version, path)
            .into_iter()
            .find(|cgroup| cgroup.dir.join(version.usage_file()).is_file()))
    }

    /// Reads the usage, the working set and the limit.
    ///
    /// # Errors
    ///
    /// When a file cannot be read (the cgroup was removed: `NotFound`) or does not parse
    /// (`InvalidData`).
    pub fn read(&self) -> io::Result<CgroupMemory> {
        let usage_bytes = parse_file(&self.dir.join(self.version.usage_file()), |text| {
            text.trim().parse::<u64>()
        })?;
        let stat = std::fs::read_to_string(self.dir.join("memory.stat"))?;
        let inactive_file = stat_value(&stat, self.version.inactive_file_key());
        let mut limit: Option<(u64, &Path)> = None;
        let mut dir = self.dir.as_path();
        while dir.starts_with(&self.mount) {
            let file = dir.join(self.version.limit_file());
            // The root cgroup of v2 has no limit file.
            let here = match parse_file(&file, parse_limit) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && dir != self.dir => None,
                result => result?,
            };
            if let Some(bytes) = here
                && limit.is_none_or(|(smallest, _)| bytes < smallest)
            {
                limit = Some((bytes, dir));
            }
            let Some(parent) = dir.parent() else { break };
            dir = parent;
        }
        Ok(CgroupMemory {
            usage_bytes,
            // Without the key (an unexpected kernel), the whole usage counts, as cAdvisor does.
            working_set_bytes: usage_bytes.saturating_sub(inactive_file.unwrap_or(0)),
            limit_bytes: limit.map(|(bytes, _)| bytes),
            limit_dir: limit.map(|(_, dir)| dir.to_path_buf()),
        })
    }
}

/// v1 limits at or above this are "no limit": the default is `PAGE_COUNTER_MAX` pages in
/// bytes, 9223372036854771712 with 4 KiB pages, a little less with larger pages.
const V1_UNLIMITED: u64 = 1 << 62;

/// Parses a limit file: "max" (v2) or a byte count; `None` when it means no limit.
fn parse_limit(text: &str) -> Result<Option<u64>, ParseIntError> {
    match text.trim() {
        "max" => Ok(None),
        bytes => Ok(Some(bytes.parse()?).filter(|&bytes| bytes < V1_UNLIMITED)),
    }
}

/// The value of `key` in a `memory.stat` file ("key value" lines).
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

/// The memory line of a `/proc/PID/cgroup` file: the v1 `memory` hierarchy when there is
/// one (the hybrid layout puts the controller there), else the v2 `0::` line. Returns the
/// version and the cgroup's path, relative to our cgroup namespace's root.
fn parse_proc_cgroup(text: &str) -> Option<(CgroupVersion, &str)> {
    let mut v2 = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "memory") {
            return Some((CgroupVersion::V1, path));
        }
        if id == "0" && controllers.is_empty() {
            v2 = Some((CgroupVersion::V2, path));
        }
    }
    v2
}

/// A cgroup mount of the hierarchy of `version`, from one /proc/self/mountinfo line.
struct Mount {
    /// The directory of the hierarchy shown at the mount point ("/" unless a subtree was
    /// mounted, as in a container).
    root: String,
    point: PathBuf,
}

/// Parses one mountinfo line: `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE
/// SOURCE SUPER_OPTIONS`. Returns the mount when it is of the hierarchy of `version`: fstype
/// `cgroup` with `memory` among the super options, or `cgroup2`.
fn parse_mount(line: &str, version: CgroupVersion) -> Option<Mount> {
    let mut fields = line.split(' ');
    let root = fields.nth(3)?;
    let point = fields.next()?;
    fields.find(|&f| f == "-")?;
    let fstype = fields.next()?;
    let super_options = fields.nth(1)?;
    let wanted = match version {
        CgroupVersion::V1 => fstype == "cgroup" && super_options.split(',').any(|o| o == "memory"),
        CgroupVersion::V2 => fstype == "cgroup2",
    };
    wanted.then(|| Mount {
        root: String::from_utf8_lossy(&unescape(root)).into_owned(),
        point: PathBuf::from(OsStr::from_bytes(&unescape(point))),
    })
}

/// Undoes mountinfo's octal escapes of space, tab, newline and backslash (`\040`…).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(&[b'\\', a @ b'0'..=b'3', b @ b'0'..=b'7', c @ b'0'..=b'7']) =
            bytes.get(i..i + 4)
        {
            out.push((a - b'0') << 6 | (b - b'0') << 3 | (c - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The directories where the cgroup at `path` (from /proc/PID/cgroup) shows, one per mount of
/// its hierarchy whose root holds it, the mounts that show most of the hierarchy first.
fn candidates(mountinfo: &str, version: CgroupVersion, path: &str) -> Vec<MemoryCgroup> {
    // A cgroup outside our cgroup namespace reads "/../..."; no mount shows it.
    if path.split('/').any(|c| c == "..") {
        return Vec::new();
    }
    let mut mounts: Vec<Mount> = mountinfo
        .lines()
        .filter_map(|line| parse_mount(line, version))
        .collect();
    mounts.sort_by_key(|m| m.root.len());
    mounts
        .into_iter()
        .filter_map(|m| {
            let below = if m.root == "/" {
                path
            } else {
                path.strip_prefix(m.root.as_str())
                    .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
            };
            let mut dir = m.point.clone();
            let below = below.trim_start_matches('/');
            if !below.is_empty() {
                dir.push(below);
            }
            Some(MemoryCgroup {
                version,
                dir,
                mount: m.point,
            })
        })
        .collect()
}

/// Reads a file that should be text, replacing what is not UTF-8.
fn read_lossy(path: impl AsRef<Path>) -> io::Result<String> {
    Ok(String::from_utf8_lossy(&std::fs::read(path)?).into_owned())
}

/// Reads a cgroup file and parses it; an `InvalidData` error naming the file when `parse`
/// fails.
fn parse_file<T, E: Display>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> io::Result<T> {
    let text = std::fs::read_to_string(path)?;
    parse(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds {:?}: {e}", path.display(), text.trim()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine: systemd's hybrid layout, v1 controllers and a v2 hierarchy.
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/f77b477cdd6b596e148b0816c3ad89c5
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    const HYBRID_MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd host on cgroup v2 only (Debian 12, Ubuntu 22.04+, RHEL 9).
    const V2_CGROUP: &str = "0::/system.slice/kafka.service\n";
    const V2_MOUNTINFO: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
26 22 0:5 / /dev rw,nosuid,relatime shared:8 - devtmpfs udev rw,size=8110160k,nr_inodes=2027540,mode=755,inode64
28 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
30 24 0:28 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:12 - bpf bpf rw,mode=700
";

    /// A CentOS 7 host (cgroup v1, controllers mounted in pairs).
    const V1_CGROUP: &str = "\
11:cpuset:/
10:memory:/system.slice/kafka.service
9:cpuacct,cpu:/system.slice/kafka.service
8:net_prio,net_cls:/
1:name=systemd:/system.slice/kafka.service
";
    const V1_MOUNTINFO: &str = "\
18 61 0:17 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw,seclabel
24 18 0:20 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:7 - tmpfs tmpfs ro,seclabel,mode=755
25 24 0:21 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,seclabel,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
30 24 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,seclabel,cpuacct,cpu
33 24 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,seclabel,memory
35 24 0:31 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,seclabel,net_prio,net_cls
";

    fn dirs(mountinfo: &str, version: CgroupVersion, path: &str) -> Vec<(String, String)> {
        candidates(mountinfo, version, path)
            .into_iter()
            .map(|c| {
                assert_eq!(c.version, version);
                (c.dir.display().to_string(), c.mount.display().to_string())
            })
            .collect()
    }

    #[test]
    fn proc_cgroup() {
        assert_eq!(
            parse_proc_cgroup(HYBRID_CGROUP),
            Some((
                CgroupVersion::V1,
                "/process_api/f77b477cdd6b596e148b0816c3ad89c5"
            ))
        );
        assert_eq!(
            parse_proc_cgroup(V2_CGROUP),
            Some((CgroupVersion::V2, "/system.slice/kafka.service"))
        );
        assert_eq!(
            parse_proc_cgroup(V1_CGROUP),
            Some((CgroupVersion::V1, "/system.slice/kafka.service"))
        );
        // v1 without a memory hierarchy, and no v2: nothing to watch.
        assert_eq!(
            parse_proc_cgroup("3:cpu,cpuacct:/\n1:name=systemd:/\n"),
            None
        );
        assert_eq!(parse_proc_cgroup(""), None);
        // A named hierarchy called "memory" is not the controller ("name=memory").
        assert_eq!(
            parse_proc_cgroup("2:name=memory:/x\n0::/y\n").map(|c| c.0),
            Some(CgroupVersion::V2)
        );
        // Colons in the path stay in it.
        assert_eq!(
            parse_proc_cgroup("0::/kubepods/pod1/cri-containerd:abc\n"),
            Some((CgroupVersion::V2, "/kubepods/pod1/cri-containerd:abc"))
        );
    }

    #[test]
    fn mounts() {
        let memory = "/sys/fs/cgroup/memory";
        assert_eq!(
            dirs(HYBRID_MOUNTINFO, CgroupVersion::V1, "/process_api/f77b"),
            [(format!("{memory}/process_api/f77b"), memory.to_owned())]
        );
        // The v2 hierarchy of the hybrid layout is found too, should /proc/PID/cgroup point there.
        assert_eq!(
            dirs(HYBRID_MOUNTINFO, CgroupVersion::V2, "/"),
            [(
                "/sys/fs/cgroup/unified".to_owned(),
                "/sys/fs/cgroup/unified".to_owned()
            )]
        );
        assert_eq!(
            dirs(
                V2_MOUNTINFO,
                CgroupVersion::V2,
                "/system.slice/kafka.service"
            ),
            [(
                "/sys/fs/cgroup/system.slice/kafka.service".to_owned(),
                "/sys/fs/cgroup".to_owned()
            )]
        );
        assert_eq!(
            dirs(
                V1_MOUNTINFO,
                CgroupVersion::V1,
                "/system.slice/kafka.service"
            ),
            [(
                format!("{memory}/system.slice/kafka.service"),
                memory.to_owned()
            )]
        );
        assert!(
            dirs(
                V2_MOUNTINFO,
                CgroupVersion::V1,
                "/system.slice/kafka.service"
            )
            .is_empty()
        );
        assert!(dirs(V1_MOUNTINFO, CgroupVersion::V2, "/").is_empty());
        // Outside our cgroup namespace.
        assert!(dirs(V2_MOUNTINFO, CgroupVersion::V2, "/../../kafka.service").is_empty());
    }

    #[test]
    fn subtree_mounts() {
        // Docker on a v1 host without a cgroup namespace: the container sees its own cgroup
        // mounted at /sys/fs/cgroup/memory, and the host's path in /proc/PID/cgroup.
        let docker = "\
1043 1035 0:29 /docker/4f2a9c /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:16 - cgroup cgroup rw,memory
";
        assert_eq!(
            dirs(docker, CgroupVersion::V1, "/docker/4f2a9c"),
            [(
                "/sys/fs/cgroup/memory".to_owned(),
                "/sys/fs/cgroup/memory".to_owned()
            )]
        );
        assert_eq!(
            dirs(docker, CgroupVersion::V1, "/docker/4f2a9c/sub"),
            [(
                "/sys/fs/cgroup/memory/sub".to_owned(),
                "/sys/fs/cgroup/memory".to_owned()
            )]
        );
        // Not under the mount's root: a sibling, or a name that only starts the same.
        assert!(dirs(docker, CgroupVersion::V1, "/docker/77e1d0").is_empty());
        assert!(dirs(docker, CgroupVersion::V1, "/docker/4f2a9c0").is_empty());
        assert!(dirs(docker, CgroupVersion::V1, "/").is_empty());

        // Both the whole hierarchy and a subtree mounted: the whole one first (it shows the
        // ancestors), escapes in mount points undone.
        let both = "\
50 22 0:26 /kubepods.slice/pod\\0401 /var/lib/kubelet/pod\\040cgroup rw - cgroup2 cgroup2 rw
28 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(
            dirs(both, CgroupVersion::V2, "/kubepods.slice/pod 1/c1"),
            [
                (
                    "/sys/fs/cgroup/kubepods.slice/pod 1/c1".to_owned(),
                    "/sys/fs/cgroup".to_owned()
                ),
                (
                    "/var/lib/kubelet/pod cgroup/c1".to_owned(),
                    "/var/lib/kubelet/pod cgroup".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn mountinfo_lines() {
        // No optional fields, several, and lines that are not cgroup mounts.
        let line = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";
        assert!(parse_mount(line, CgroupVersion::V1).is_some());
        assert!(parse_mount(line, CgroupVersion::V2).is_none());
        let line = "35 31 0:32 / /m rw shared:3 master:1 - cgroup cgroup rw,nosuid,memory,cpu";
        assert_eq!(
            parse_mount(line, CgroupVersion::V1).unwrap().point,
            Path::new("/m")
        );
        let line = "35 31 0:32 / /m rw - cgroup cgroup rw,memory_recursiveprot";
        assert!(parse_mount(line, CgroupVersion::V1).is_none());
        assert!(parse_mount("35 31 0:32 / /m rw - tmpfs tmpfs rw", CgroupVersion::V2).is_none());
        assert!(parse_mount("garbage", CgroupVersion::V2).is_none());
        assert!(parse_mount("1 2 3 / /m rw cgroup2 cgroup2 rw", CgroupVersion::V2).is_none());

        assert_eq!(unescape(r"/a\040b\011c\134d"), b"/a b\tc\\d");
        assert_eq!(unescape(r"/a\04"), b"/a\\04");
        assert_eq!(unescape(r"/a\999b"), b"/a\\999b");
        assert_eq!(unescape("\\"), b"\\");
        assert_eq!(unescape(r"\400\+12"), b"\\400\\+12");
    }

    #[test]
    fn limits_and_stats() {
        let limit = |text| parse_limit(text).ok();
        assert_eq!(limit("max\n"), Some(None));
        assert_eq!(limit("9223372036854771712\n"), Some(None));
        // 64 KiB pages (arm64, ppc64le).
        assert_eq!(limit("9223372036854710272\n"), Some(None));
        assert_eq!(limit("4611686018427387903\n"), Some(Some((1 << 62) - 1)));
        assert_eq!(limit("4294967296\n"), Some(Some(4 << 30)));
        assert_eq!(limit("0\n"), Some(Some(0)));
        assert_eq!(limit("-1\n"), None);
        assert_eq!(limit(""), None);

        let v1 = "\
cache 266240
rss 1662976
inactive_anon 1609728
active_anon 8192
inactive_file 53248
active_file 212992
hierarchical_memory_limit 9223372036854771712
total_cache 1266240
total_rss 2662976
total_inactive_anon 2609728
total_inactive_file 353248
total_active_file 912992
";
        assert_eq!(stat_value(v1, "total_inactive_file"), Some(353_248));
        assert_eq!(stat_value(v1, "inactive_file"), Some(53_248));
        assert_eq!(stat_value(v1, "inactive"), None);
        let v2 = "\
anon 4563402752
file 1320296448
kernel 41631744
shmem 0
file_mapped 1112064
inactive_anon 4563337216
active_anon 0
inactive_file 1018552320
active_file 301744128
unevictable 0
";
        assert_eq!(stat_value(v2, "inactive_file"), Some(1_018_552_320));
        assert_eq!(stat_value(v2, "total_inactive_file"), None);
        assert_eq!(stat_value("inactive_file x\n", "inactive_file"), None);
    }

    /// A cgroup tree in a temporary directory, removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("tracer-cgroup-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            Tree(root)
        }

        fn write(&self, file: &str, contents: &str) {
            let path = self.0.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_v2_limit_from_parent() {
        // A Kubernetes container: no limit of its own, the pod's 8 GiB one level up, a larger
        // one on the QoS class, the root (no limit file) above.
        let tree = Tree::new("v2");
        tree.write("kubepods.slice/memory.max", "12884901888\n");
        tree.write("kubepods.slice/pod1/memory.max", "8589934592\n");
        tree.write("kubepods.slice/pod1/c1/memory.max", "max\n");
        tree.write("kubepods.slice/pod1/c1/memory.current", "6442450944\n");
        tree.write(
            "kubepods.slice/pod1/c1/memory.stat",
            "anon 5368709120\nfile 1073741824\ninactive_file 805306368\n",
        );
        let cgroup = MemoryCgroup {
            version: CgroupVersion::V2,
            dir: tree.0.join("kubepods.slice/pod1/c1"),
            mount: tree.0.clone(),
        };
        assert_eq!(
            cgroup.read().unwrap(),
            CgroupMemory {
                usage_bytes: 6 << 30,
                working_set_bytes: (6 << 30) - (768 << 20),
                limit_bytes: Some(8 << 30),
                limit_dir: Some(tree.0.join("kubepods.slice/pod1")),
            }
        );

        // The walk stops at the mount.
        let below = MemoryCgroup {
            mount: tree.0.join("kubepods.slice/pod1/c1"),
            ..cgroup.clone()
        };
        assert_eq!(below.read().unwrap().limit_bytes, None);

        // Its own limit, smaller than the pod's; inactive cache above usage floors at 0.
        tree.write("kubepods.slice/pod1/c1/memory.max", "7516192768\n");
        tree.write(
            "kubepods.slice/pod1/c1/memory.stat",
            "inactive_file 7000000000\n",
        );
        let m = cgroup.read().unwrap();
        assert_eq!(
            (m.limit_bytes, m.limit_dir),
            (Some(7 << 30), Some(cgroup.dir.clone()))
        );
        assert_eq!(m.working_set_bytes, 0);

        tree.write("kubepods.slice/pod1/memory.max", "lots\n");
        let err = cgroup.read().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("pod1/memory.max"), "{err}");

        let gone = MemoryCgroup {
            dir: tree.0.join("kubepods.slice/pod2"),
            ..cgroup
        };
        assert_eq!(gone.read().unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn reads_v1_unlimited() {
        // A systemd service without MemoryLimit=: unlimited up to the root.
        let tree = Tree::new("v1");
        tree.write("memory.limit_in_bytes", "9223372036854771712\n");
        tree.write(
            "system.slice/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        tree.write(
            "system.slice/kafka.service/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        tree.write(
            "system.slice/kafka.service/memory.usage_in_bytes",
            "3239936\n",
        );
        tree.write(
            "system.slice/kafka.service/memory.stat",
            "cache 266240\ninactive_file 53248\ntotal_cache 266240\ntotal_inactive_file 153248\n",
        );
        let cgroup = MemoryCgroup {
            version: CgroupVersion::V1,
            dir: tree.0.join("system.slice/kafka.service"),
            mount: tree.0.clone(),
        };
        assert_eq!(
            cgroup.read().unwrap(),
            CgroupMemory {
                usage_bytes: 3_239_936,
                working_set_bytes: 3_239_936 - 153_248,
                limit_bytes: None,
                limit_dir: None,
            }
        );
        // MemoryLimit=4G on the slice.
        tree.write("system.slice/memory.limit_in_bytes", "4294967296\n");
        let m = cgroup.read().unwrap();
        assert_eq!(
            (m.limit_bytes, m.limit_dir),
            (Some(4 << 30), Some(tree.0.join("system.slice")))
        );
    }

    #[test]
    fn own_cgroup() {
        // Whatever this machine has (maybe no cgroup at all), finding must not fail, and what
        // is found must read.
        if let Some(cgroup) = MemoryCgroup::find(std::process::id()).unwrap() {
            assert!(cgroup.dir.starts_with(&cgroup.mount));
            let m = cgroup.read().unwrap();
            assert!(m.usage_bytes > 0);
            assert!(m.working_set_bytes <= m.usage_bytes);
        }
        assert_eq!(
            MemoryCgroup::find(u32::MAX).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(CgroupVersion::V1.as_str(), "v1");
        assert_eq!(CgroupVersion::V2.as_str(), "v2");
    }
}
