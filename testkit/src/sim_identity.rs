//! What makes a file the same file: paths resolved at each call (a working directory,
//! symbolic links), hard links, and the owner and permissions a file keeps; and the
//! namespace a crash leaves, with files shared by several names kept shared.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Component, Path, PathBuf};

use ptvp35::FileMeta;

use super::{Inode, SimFs, State};

/// Owner, group and permission bits of a simulated file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Permission bits.
    pub mode: u32,
    /// Owning user.
    pub uid: u32,
    /// Owning group.
    pub gid: u32,
}

impl Default for Owner {
    /// What a new file gets: `0644`, owned by root.
    fn default() -> Self {
        Owner {
            mode: 0o644,
            uid: 0,
            gid: 0,
        }
    }
}

impl State {
    /// `path` made absolute from the working directory, `.` and `..` taken out.
    pub(super) fn abs(&self, path: &Path) -> PathBuf {
        let mut out = PathBuf::from("/");
        let full = if path.is_absolute() {
            path.to_path_buf()
        } else {
            out.join(&self.cwd).join(path)
        };
        for c in full.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::ParentDir => {
                    out.pop();
                }
                _ => {}
            }
        }
        out
    }

    /// Follows `path` (absolute) while it is a symbolic link.
    pub(super) fn follow(&self, path: &Path) -> io::Result<PathBuf> {
        let mut p = path.to_path_buf();
        for _ in 0..40 {
            let Some(target) = self.symlinks.get(&p) else {
                return Ok(p);
            };
            let dir = p.parent().unwrap_or(Path::new("/")).to_path_buf();
            p = self.abs(&dir.join(target));
        }
        Err(io::Error::other("more than 40 levels of symbolic links"))
    }

    pub(super) fn meta(&self, ino: u64) -> io::Result<FileMeta> {
        let node = self.file_ref(ino)?;
        Ok(FileMeta {
            id: (0, ino),
            links: self.names.values().filter(|&&i| i == ino).count() as u64,
            mode: node.owner.mode,
            uid: node.owner.uid,
            gid: node.owner.gid,
        })
    }

    /// The filesystem a power cut leaves: `names` (the durable namespace after the
    /// crash's directory fates) over `contents` (each file's bytes after its fates). A
    /// file reached by several names stays one file; owners are the durable ones.
    pub(super) fn crashed(
        &self,
        names: &BTreeMap<PathBuf, u64>,
        contents: &mut HashMap<u64, Vec<u8>>,
    ) -> SimFs {
        let fs = SimFs::new();
        {
            let mut out = fs.state.lock();
            for (path, old) in names {
                let owner = self
                    .inodes
                    .get(old)
                    .map(|n| n.durable_owner)
                    .unwrap_or_default();
                let ino = if let Some(&ino) = out.shared.get(old) {
                    // Another name of the same file, seen already.
                    ino
                } else {
                    let ino = out.next_ino;
                    out.next_ino += 1;
                    out.inodes.insert(
                        ino,
                        Inode {
                            live: contents.get(old).cloned().unwrap_or_default(),
                            durable: contents.remove(old).unwrap_or_default(),
                            name: path.clone(),
                            owner,
                            durable_owner: owner,
                            ..Inode::default()
                        },
                    );
                    out.shared.insert(*old, ino);
                    ino
                };
                out.names.insert(path.clone(), ino);
                out.durable_names.insert(path.clone(), ino);
            }
            out.shared.clear();
            out.dirs.clone_from(&self.dirs);
            out.symlinks.clone_from(&self.symlinks);
            out.cwd.clone_from(&self.cwd);
            out.salts = self.salts;
        }
        fs
    }
}

impl SimFs {
    /// Makes `link` a symbolic link to `target` (durable at once).
    pub fn symlink(&self, target: &Path, link: &Path) {
        let mut st = self.state.lock();
        let link = st.abs(link);
        st.symlinks.insert(link, target.to_path_buf());
    }

    /// The target of the symbolic link at `link`, if it is one.
    #[must_use]
    pub fn read_link(&self, link: &Path) -> Option<PathBuf> {
        let st = self.state.lock();
        st.symlinks.get(&st.abs(link)).cloned()
    }

    /// Gives the file at `existing` a second name, `new` (durable at once).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if there is no file at `existing`.
    pub fn hard_link(&self, existing: &Path, new: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let (existing, new) = (st.abs(existing), st.abs(new));
        let ino = *st
            .names
            .get(&existing)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.names.insert(new.clone(), ino);
        st.durable_names.insert(new, ino);
        Ok(())
    }

    /// Sets the owner and permissions of the file at `path` (durable at once).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if there is no file at `path`.
    pub fn set_owner(&self, path: &Path, owner: Owner) -> io::Result<()> {
        let mut st = self.state.lock();
        let path = st.follow(&st.abs(path))?;
        let ino = *st
            .names
            .get(&path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let node = st.file_mut(ino)?;
        node.owner = owner;
        node.durable_owner = owner;
        Ok(())
    }

    /// The owner and permissions of the file at `path`, as the program sees them.
    #[must_use]
    pub fn owner(&self, path: &Path) -> Option<Owner> {
        let st = self.state.lock();
        let path = st.follow(&st.abs(path)).ok()?;
        st.names
            .get(&path)
            .and_then(|i| st.inodes.get(i))
            .map(|n| n.owner)
    }

    /// Changes the working directory that relative paths start from.
    pub fn set_cwd(&self, dir: &Path) {
        let mut st = self.state.lock();
        let dir = st.abs(dir);
        st.cwd = dir;
    }
}
