//! Test support, outside semver: the filesystem seam for a simulated, crashable
//! filesystem, a reference model, and the fuzz bodies.

pub use crate::fs::{Fs, FsFile, RealFs};
