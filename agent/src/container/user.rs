//! `process.user.username` → uid, gid and additional gids from the container rootfs'
//! `/etc/passwd` and `/etc/group` (hcsshim `getUser`/`getUserInfo`: `user`, `uid`, `user:group`,
//! `uid:gid`, names or numbers on either side).

use std::path::Path;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// User ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// Supplementary groups (groups listing the user by name), without the primary one.
    pub additional_gids: Vec<u32>,
}

/// Why a username cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// No passwd entry with this name.
    #[error("user {0:?} not found in the container's /etc/passwd")]
    UnknownUser(String),
    /// No group entry with this name.
    #[error("group {0:?} not found in the container's /etc/group")]
    UnknownGroup(String),
}

#[derive(Debug)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 || l.starts_with('#') {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').map(str::trim).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` (`user[:group]`) against the passwd and group file contents.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Resolved, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = passwd_entries(passwd).find(|e| e.name == user || user.parse() == Ok(e.uid));
    let (uid, mut gid, name) = match (entry, user.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.to_owned())),
        (None, Ok(uid)) => (uid, 0, None),
        (None, Err(_)) => return Err(UserError::UnknownUser(user.to_owned())),
    };
    if let Some(g) = grp {
        gid = match group_entries(group).find(|(n, id, _)| *n == g || g.parse() == Ok(*id)) {
            Some((_, id, _)) => id,
            None => g.parse().map_err(|_| UserError::UnknownGroup(g.to_owned()))?,
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for (_, id, members) in group_entries(group) {
            if id != gid && members.contains(&name.as_str()) && !additional_gids.contains(&id) {
                additional_gids.push(id);
            }
        }
    }
    Ok(Resolved {
        uid,
        gid,
        additional_gids,
    })
}

/// Resolves `spec` against `<rootfs>/etc/passwd` and `<rootfs>/etc/group` (missing files are
/// empty: numeric users still resolve).
pub fn resolve_in_rootfs(rootfs: &Path, spec: &str) -> Result<Resolved, UserError> {
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_default();
    resolve(spec, &read("etc/passwd"), &read("etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:100::/:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nusers:x:100:alice\nalice:x:1000:\nwheel:x:10:alice, bob\nbad:x:zz:alice\n";

    #[test]
    fn by_name_with_supplementary_groups() {
        let r = resolve("alice", PASSWD, GROUP).unwrap();
        assert_eq!(
            r,
            Resolved {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![100, 10]
            }
        );
        let r = resolve("bob", PASSWD, GROUP).unwrap();
        assert_eq!(
            r,
            Resolved {
                uid: 1001,
                gid: 100,
                additional_gids: vec![10]
            }
        );
    }

    #[test]
    fn numeric_and_pairs() {
        assert_eq!(resolve("1000", PASSWD, GROUP).unwrap().gid, 1000);
        let r = resolve("4242:4343", PASSWD, GROUP).unwrap();
        assert_eq!(
            r,
            Resolved {
                uid: 4242,
                gid: 4343,
                additional_gids: vec![]
            }
        );
        let r = resolve("alice:wheel", PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids), (1000, 10, vec![100]));
        assert_eq!(resolve("7", "", "").unwrap().gid, 0);
    }

    #[test]
    fn unknown_names_fail() {
        assert_eq!(
            resolve("carol", PASSWD, GROUP),
            Err(UserError::UnknownUser("carol".into()))
        );
        assert_eq!(
            resolve("alice:nogroup", PASSWD, GROUP),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
    }
}
