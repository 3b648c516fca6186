//! Set-up shared by the test modules.

pub mod manager;
