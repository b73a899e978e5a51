//! Which agents of one tier are alive: heartbeats in a sorted set scored
//! by expiry on the server's clock (one Lua script refreshes this agent,
//! drops the expired and answers the live list), and leaving on SIGTERM.
//!
//! Owns: [`AgentId`], [`Track`], [`LiveAgent`] and [`Membership`]. Leaves
//! to others: who owns which partition ([`super::assignment`]), whether
//! Redis answers ([`super::link`]), leases on the partitions (the queue
//! store), timers and sleeping (the partition task).
//!
//! Invariant: the live list is judged on the Redis server's clock, so the
//! agents' clocks do not matter; a member written by another herald
//! version is skipped, never fatal.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::shared_limiter::{ConnectOptions, SharedError, check_name, within};

const HEARTBEAT_LUA: &str = include_str!("lua/membership_heartbeat.lua");

/// One agent (pod) of a tier: its pod name, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(String);

impl AgentId {
    /// 1-253 letters, digits, '.', '_' or '-' (a pod name fits).
    pub fn new(id: &str) -> Result<AgentId, SharedError> {
        let ok = !id.is_empty()
            && id.len() <= 253
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(AgentId(id.to_owned()))
        } else {
            Err(SharedError::InvalidName {
                what: "agent id",
                max: 253,
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which Deployment an agent belongs to during a rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Track {
    #[default]
    Stable,
    Canary,
}

/// A live agent as the heartbeat set lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LiveAgent {
    pub id: AgentId,
    pub track: Track,
}

impl LiveAgent {
    fn member(&self) -> String {
        let t = match self.track {
            Track::Stable => 's',
            Track::Canary => 'c',
        };
        format!("{t}:{}", self.id)
    }

    /// Members written by another herald version are skipped, not fatal.
    fn parse(member: &str) -> Option<LiveAgent> {
        let (t, id) = member.split_once(':')?;
        let track = match t {
            "s" => Track::Stable,
            "c" => Track::Canary,
            _ => return None,
        };
        Some(LiveAgent {
            id: AgentId::new(id).ok()?,
            track,
        })
    }
}

/// This agent's heartbeat in the live set of one tier.
#[derive(Clone)]
pub struct Membership {
    conn: ConnectionManager,
    key: String,
    me: LiveAgent,
    ttl: Duration,
    deadline: Duration,
    script: Arc<Script>,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("key", &self.key)
            .field("me", &self.me)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A heartbeat lives `ttl` (server time); beat every `ttl / 3` or so.
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        tier: &str,
        me: LiveAgent,
        ttl: Duration,
        options: ConnectOptions,
    ) -> Result<Membership, SharedError> {
        check_name("key prefix", prefix)?;
        check_name("tier", tier)?;
        Ok(Membership {
            conn,
            key: format!("{prefix}:members:{tier}"),
            me,
            ttl: ttl.max(Duration::from_millis(1)),
            deadline: options.deadline,
            script: Arc::new(Script::new(HEARTBEAT_LUA)),
        })
    }

    pub fn me(&self) -> &LiveAgent {
        &self.me
    }

    /// Refreshes this agent and answers every live agent, sorted by id.
    pub async fn heartbeat(&self) -> Result<Vec<LiveAgent>, SharedError> {
        self.heartbeat_at(None).await
    }

    /// Drops this agent from the live set at once (SIGTERM), so the others
    /// take its partitions without waiting for the heartbeat to expire.
    pub async fn leave(&self) -> Result<(), SharedError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(&self.key).arg(self.me.member());
        let _: i64 = within(self.deadline, cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    pub(crate) async fn heartbeat_at(
        &self,
        now_us: Option<u64>,
    ) -> Result<Vec<LiveAgent>, SharedError> {
        let ttl_us = u64::try_from(self.ttl.as_micros()).unwrap_or(u64::MAX);
        let mut inv = self.script.key(&self.key);
        inv.arg(self.me.member())
            .arg(ttl_us.min(super::shared_limiter::MAX_MICROS))
            .arg(now_us.map(|n| n.to_string()).unwrap_or_default());
        let mut conn = self.conn.clone();
        let members: Vec<String> = within(self.deadline, inv.invoke_async(&mut conn)).await?;
        let mut live: Vec<LiveAgent> = members.iter().filter_map(|m| LiveAgent::parse(m)).collect();
        live.sort();
        live.dedup_by(|a, b| a.id == b.id);
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::assignment::CanarySplit;
    use crate::fleet::shared_limiter::connect;
    use crate::store::redis::server::{Persistence, RedisServer};

    const BASE_US: u64 = 1_700_000_000_000_000;

    fn id(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }

    #[test]
    fn heartbeats_list_the_live_and_forget_the_expired() {
        let server = RedisServer::start(Persistence::None).expect("redis-server");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let opts = ConnectOptions {
                deadline: Duration::from_secs(5),
            };
            let conn = connect(&server.url(), opts).await.unwrap();
            let ttl = Duration::from_secs(3);
            let member = |name: &str, track| {
                let me = LiveAgent {
                    id: id(name),
                    track,
                };
                Membership::new(conn.clone(), "t", "tier-a", me, ttl, opts).unwrap()
            };
            let a = member("pod-b", Track::Stable);
            let b = member("pod-a", Track::Canary);
            let t0 = BASE_US;
            assert_eq!(a.heartbeat_at(Some(t0)).await.unwrap().len(), 1);
            let live = b.heartbeat_at(Some(t0 + 1_000_000)).await.unwrap();
            assert_eq!(
                live,
                vec![
                    LiveAgent {
                        id: id("pod-a"),
                        track: Track::Canary
                    },
                    LiveAgent {
                        id: id("pod-b"),
                        track: Track::Stable
                    },
                ]
            );
            let split = CanarySplit::from_live(&live, 10);
            assert_eq!(split.canary_agents, [id("pod-a")].into_iter().collect());
            // Another version's member is skipped, not fatal.
            let mut c = conn.clone();
            let _: i64 = redis::cmd("ZADD")
                .arg("t:members:tier-a")
                .arg((t0 + 10_000_000).to_string())
                .arg("x:someone")
                .query_async(&mut c)
                .await
                .unwrap();
            // pod-b's heartbeat (t0 + 3 s) has expired at t0 + 3 s.
            let live = b.heartbeat_at(Some(t0 + 3_000_000)).await.unwrap();
            assert_eq!(live.len(), 1);
            assert_eq!(live[0].id, id("pod-a"));
            a.heartbeat_at(Some(t0 + 3_000_000)).await.unwrap();
            a.leave().await.unwrap();
            let live = b.heartbeat_at(Some(t0 + 3_500_000)).await.unwrap();
            assert_eq!(
                live.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
                ["pod-a"]
            );
            // On server time, with the set's own expiry.
            let live = a.heartbeat().await.unwrap();
            assert!(live.iter().any(|l| l.id == id("pod-b")));
            let pttl: i64 = redis::cmd("PTTL")
                .arg("t:members:tier-a")
                .query_async(&mut c)
                .await
                .unwrap();
            assert!(pttl > 3_000 && pttl <= 6_001, "pttl {pttl}");
        });
    }

    #[test]
    fn names_are_checked() {
        assert!(AgentId::new("").is_err());
        assert!(AgentId::new("a:b").is_err());
        assert!(AgentId::new(&"a".repeat(253)).is_ok());
        assert!(AgentId::new(&"a".repeat(254)).is_err());
        assert_eq!(LiveAgent::parse("s:pod-1").unwrap().track, Track::Stable);
        assert_eq!(LiveAgent::parse("c:pod-1").unwrap().member(), "c:pod-1");
        assert!(LiveAgent::parse("pod-1").is_none());
    }
}
