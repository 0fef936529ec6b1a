//! Entry names: sanitising (no absolute paths, no `..`) and OCI whiteouts → overlayfs form.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

/// Whiteout prefix.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The overlayfs opaque xattr.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a tar entry turns into after whiteout conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// An ordinary entry at this path.
    Entry(PathBuf),
    /// An overlayfs whiteout (char 0/0) at this path.
    Whiteout(PathBuf),
    /// Mark this directory opaque.
    Opaque(PathBuf),
    /// Nothing to do (aufs metadata).
    Skip,
}

/// Classifies a sanitised entry path (whiteout conversion, pure).
pub fn classify(rel: &Path) -> Action {
    let Some(name) = rel.file_name().and_then(OsStr::to_str) else {
        return Action::Entry(rel.to_path_buf());
    };
    let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    if name == OPAQUE_MARKER {
        Action::Opaque(parent)
    } else if name.starts_with(".wh..wh.") {
        Action::Skip
    } else if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        if target.is_empty() {
            Action::Skip
        } else {
            Action::Whiteout(parent.join(target))
        }
    } else {
        Action::Entry(rel.to_path_buf())
    }
}

/// Turns a tar name into a relative path of normal components; `Ok(None)` is the root itself.
pub fn sanitize(name: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains a `..` component"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_are_classified() {
        let p = Path::new;
        assert_eq!(
            classify(p("etc/.wh.passwd")),
            Action::Whiteout(p("etc/passwd").into())
        );
        assert_eq!(classify(p(".wh.tmp")), Action::Whiteout(p("tmp").into()));
        assert_eq!(
            classify(p("var/cache/.wh..wh..opq")),
            Action::Opaque(p("var/cache").into())
        );
        assert_eq!(classify(p(".wh..wh..opq")), Action::Opaque(p("").into()));
        assert_eq!(classify(p("a/.wh..wh.plnk")), Action::Skip);
        assert_eq!(classify(p("a/.wh.")), Action::Skip);
        assert_eq!(classify(p("a/b.wh.c")), Action::Entry(p("a/b.wh.c").into()));
    }

    #[test]
    fn names_are_sanitised() {
        let p = Path::new;
        assert_eq!(sanitize(p("./a/b/")), Ok(Some(p("a/b").into())));
        assert_eq!(sanitize(p("./")), Ok(None));
        assert!(sanitize(p("/etc/passwd")).is_err());
        assert!(sanitize(p("a/../../x")).is_err());
        assert!(sanitize(p("../x")).is_err());
    }
}
