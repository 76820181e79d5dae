//! `--kernel-cache DIR|off`: where the vmlinux extracted from a bzImage is kept
//! ([`crate::kernel_cache`]).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// `--kernel-cache`: whether plugvm extracts the vmlinux from a bzImage, and where it keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelCacheConfig {
    /// Not given: `$XDG_CACHE_HOME/plugvm/kernels`, else `$HOME/.cache/plugvm/kernels`
    /// (resolved at boot, see [`KernelCacheConfig::dir`]).
    #[default]
    Default,
    /// `--kernel-cache DIR`.
    Dir(PathBuf),
    /// `--kernel-cache off`: a bzImage is booted as it is, its decompressor running in the
    /// guest.
    Off,
}

impl KernelCacheConfig {
    /// The option's value: `off`, or a directory (`./off` for a directory of that name).
    pub fn from_arg(value: PathBuf) -> Self {
        if value == Path::new("off") {
            KernelCacheConfig::Off
        } else {
            KernelCacheConfig::Dir(value)
        }
    }

    /// Whether a bzImage's vmlinux is extracted at all.
    pub fn enabled(&self) -> bool {
        *self != KernelCacheConfig::Off
    }

    /// The cache directory, from this process's environment for [`Default`]; `None` when
    /// off, or when neither variable gives one (the vmlinux is then extracted uncached).
    ///
    /// [`Default`]: KernelCacheConfig::Default
    pub fn dir(&self) -> Option<PathBuf> {
        match self {
            KernelCacheConfig::Default => default_dir(
                std::env::var_os("XDG_CACHE_HOME").as_deref(),
                std::env::var_os("HOME").as_deref(),
            ),
            KernelCacheConfig::Dir(dir) => Some(dir.clone()),
            KernelCacheConfig::Off => None,
        }
    }
}

/// The default cache directory for these values of `XDG_CACHE_HOME` and `HOME`. The XDG
/// base directory spec ignores a relative `XDG_CACHE_HOME`; a relative `HOME` is as unusable.
pub fn default_dir(xdg_cache_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    let absolute = |v: Option<&OsStr>| Some(PathBuf::from(v?)).filter(|p| p.is_absolute());
    absolute(xdg_cache_home)
        .or_else(|| absolute(home).map(|h| h.join(".cache")))
        .map(|cache| cache.join("plugvm").join("kernels"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_and_directories() {
        assert_eq!(
            KernelCacheConfig::from_arg("off".into()),
            KernelCacheConfig::Off
        );
        assert!(!KernelCacheConfig::Off.enabled());
        assert_eq!(KernelCacheConfig::Off.dir(), None);
        let dir = KernelCacheConfig::from_arg("./off".into());
        assert_eq!(dir.dir(), Some(PathBuf::from("./off")));
        assert!(dir.enabled() && KernelCacheConfig::Default.enabled());
    }

    #[test]
    fn default_dir_follows_xdg_then_home() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            default_dir(os("/x/cache"), os("/home/u")),
            Some(PathBuf::from("/x/cache/plugvm/kernels"))
        );
        assert_eq!(
            default_dir(None, os("/home/u")),
            Some(PathBuf::from("/home/u/.cache/plugvm/kernels"))
        );
        assert_eq!(
            default_dir(os("relative"), os("/home/u")),
            Some(PathBuf::from("/home/u/.cache/plugvm/kernels"))
        );
        assert_eq!(default_dir(os(""), os("")), None);
        assert_eq!(default_dir(None, None), None);
    }
}
