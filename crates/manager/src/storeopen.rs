//! Opening the manager's store from `[manager]` (placeholder; filled in next).
