//! What nodes share: names, numbering, history and presence.

pub(crate) mod redis;
