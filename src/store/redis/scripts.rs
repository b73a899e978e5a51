//! The queue's Lua scripts, compiled into the binary.
//!
//! Owns: one [`Script`] per multi-step change (see each file under `lua/`
//! for its arguments and answers). Leaves to others: when to run them.
//!
//! Invariant: every change of more than one key happens inside one script,
//! so Redis applies it whole or not at all; `Script` runs them by hash and
//! loads them again when the server lost its script cache (a restart).

use ::redis::Script;

pub(super) struct Scripts {
    pub init: Script,
    pub accept: Script,
    pub read: Script,
    pub transition: Script,
    pub lease: Script,
    pub load_page: Script,
    pub feed: Script,
    pub cleanup: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            init: Script::new(include_str!("lua/init.lua")),
            accept: Script::new(include_str!("lua/accept.lua")),
            read: Script::new(include_str!("lua/read.lua")),
            transition: Script::new(include_str!("lua/transition.lua")),
            lease: Script::new(include_str!("lua/lease.lua")),
            load_page: Script::new(include_str!("lua/load_page.lua")),
            feed: Script::new(include_str!("lua/feed.lua")),
            cleanup: Script::new(include_str!("lua/cleanup.lua")),
        }
    }
}
