//! Pages, one module each.

pub mod home;
