//! What only a shared queue has: several agents, partition leases and
//! their fencing, per-chat order across agents, the partition feed, the
//! layout checks, and secrets kept out of errors. Real `redis-server`s.

use std::time::Duration;

use ::redis::Value;

use super::keys::id_hex;
use super::server::Persistence;
use super::tests::{PARTITIONS, accept_one, attempt, connect, options, start, take_all};
use super::{HANDOVER_GRACE, RedisOptions, RedisStore};
use crate::store::record::tests::sample_new;
use crate::store::{
    ChatRef, DeadSelection, MessageId, MessageState, NewMessage, Store, StoreError,
};

const SHORT_LEASE: Duration = Duration::from_millis(300);

async fn short_lease(server: &super::server::RedisServer, agent: &str) -> RedisStore {
    RedisStore::connect(RedisOptions {
        lease_ttl: SHORT_LEASE,
        ..options(server, agent)
    })
    .await
    .unwrap()
}

async fn let_leases_expire() {
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(150)).await;
}

#[tokio::test]
async fn a_partition_has_one_holder_at_a_time() {
    let server = start(Persistence::None);
    let a = connect(&server, "a").await;
    let b = connect(&server, "b").await;
    let token = a.acquire(3).await.unwrap().expect("free partition");
    assert_eq!(b.acquire(3).await.unwrap(), None);
    // Acquiring again what one holds renews it with the same token.
    assert_eq!(a.acquire(3).await.unwrap(), Some(token));
    assert_eq!(a.held(), [(3, token)]);
    assert!(b.held().is_empty());
    assert!(!b.renew(3).await.unwrap());
    assert!(a.renew(3).await.unwrap());

    // A restarted agent (same name, no token) waits like anyone else.
    let a_again = connect(&server, "a").await;
    assert_eq!(a_again.acquire(3).await.unwrap(), None);

    // Released, it is free at once, under a larger token.
    a.release(3).await.unwrap();
    assert!(a.held().is_empty());
    let next = b.acquire(3).await.unwrap().expect("released partition");
    assert!(next > token);
    assert!(!a.renew(3).await.unwrap());
    assert!(matches!(
        a.acquire(PARTITIONS).await,
        Err(StoreError::Storage(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_racing_for_a_partition_get_one_winner() {
    let server = start(Persistence::None);
    let mut agents = Vec::new();
    for n in 0..6 {
        agents.push(connect(&server, &format!("agent-{n}")).await);
    }
    let mut races = Vec::new();
    for agent in &agents {
        let agent = agent.clone();
        races.push(tokio::spawn(async move { agent.acquire(5).await.unwrap() }));
    }
    let mut winners = Vec::new();
    for race in races {
        winners.extend(race.await.unwrap());
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let holders: usize = agents.iter().map(|a| a.held().len()).sum();
    assert_eq!(holders, 1);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_a_larger_token() {
    let server = start(Persistence::None);
    let a = short_lease(&server, "a").await;
    let b = short_lease(&server, "b").await;
    let first = a.acquire(0).await.unwrap().unwrap();
    assert_eq!(b.acquire(0).await.unwrap(), None);
    let_leases_expire().await;
    // Locally, a stops counting on the lease before it can be taken.
    assert!(a.held().is_empty());
    let second = b.acquire(0).await.unwrap().expect("expired lease");
    assert!(second > first);
    assert!(!a.renew(0).await.unwrap());
    assert_eq!(b.held(), [(0, second)]);
}

#[tokio::test]
async fn an_expired_lease_nobody_took_renews() {
    let server = start(Persistence::None);
    let a = short_lease(&server, "a").await;
    let token = a.acquire(1).await.unwrap().unwrap();
    let_leases_expire().await;
    assert!(a.held().is_empty());
    assert!(a.renew(1).await.unwrap());
    assert_eq!(a.held(), [(1, token)]);
}

#[tokio::test]
async fn a_stale_holder_is_fenced_and_changes_nothing() {
    let server = start(Persistence::None);
    let a = short_lease(&server, "a").await;
    let b = short_lease(&server, "b").await;
    take_all(&a).await;
    let ids: Vec<MessageId> = a
        .accept(vec![sample_new(1), sample_new(1), sample_new(1)], 1)
        .await
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect();
    let partition = a.partition_of(&ChatRef::Id(1));
    a.mark_in_flight(ids[0], "p".into(), 2).await.unwrap();
    let_leases_expire().await;
    b.acquire(partition).await.unwrap().expect("expired lease");
    let before = [
        a.get(ids[0]).await.unwrap().unwrap(),
        a.get(ids[1]).await.unwrap().unwrap(),
    ];
    let stats = a.stats().await.unwrap();

    let fenced = Err(StoreError::Fenced { partition });
    assert_eq!(
        a.record_retry(ids[0], attempt(3, "transient"), 9).await,
        fenced
    );
    assert_eq!(a.mark_in_flight(ids[1], "p".into(), 3).await, fenced);
    assert_eq!(a.readdress(ids[1], ChatRef::Id(5)).await, fenced);
    assert_eq!(
        a.pending_in(partition).await,
        Err(StoreError::Fenced { partition })
    );
    assert!(!a.held().iter().any(|(p, _)| *p == partition));
    assert_eq!(a.get(ids[0]).await.unwrap().unwrap(), before[0]);
    assert_eq!(a.get(ids[1]).await.unwrap().unwrap(), before[1]);
    assert_eq!(a.stats().await.unwrap(), stats);

    // A final outcome is a fact, not a claim on the partition: a send the
    // stale holder made before its lease ended is recorded all the same.
    a.record_delivered(ids[0], "p".into(), None, 3)
        .await
        .unwrap();
    a.record_dead_letter(ids[1], attempt(3, "permanent"), "x".into())
        .await
        .unwrap();
    assert_eq!(
        a.get(ids[0]).await.unwrap().unwrap().state,
        MessageState::Delivered
    );
    assert_eq!(
        a.get(ids[1]).await.unwrap().unwrap().state,
        MessageState::DeadLettered
    );

    // The new holder loads only what is still open, and a repeated report
    // of the delivery changes nothing.
    let loaded = b.pending_in(partition).await.unwrap();
    assert_eq!(loaded.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[2]]);
    assert!(loaded.iter().all(|m| m.state == MessageState::Pending));
    b.record_delivered(ids[0], "p".into(), None, 4)
        .await
        .unwrap();
    b.record_delivered(ids[2], "p".into(), None, 4)
        .await
        .unwrap();
    let stats = b.stats().await.unwrap();
    assert_eq!((stats.in_flight, stats.delivered_retained), (0, 2));
}

#[tokio::test]
async fn a_partition_taken_from_a_lapsed_holder_waits_the_handover_grace() {
    let server = start(Persistence::None);
    let a = short_lease(&server, "a").await;
    let b = short_lease(&server, "b").await;
    a.acquire(0).await.unwrap().unwrap();
    assert_eq!(a.load_wait(0), Some(Duration::ZERO));
    assert_eq!(b.load_wait(0), None);
    let_leases_expire().await;
    b.acquire(0).await.unwrap().expect("expired lease");
    let wait = b.load_wait(0).unwrap();
    assert!(
        wait > HANDOVER_GRACE - Duration::from_secs(1) && wait <= HANDOVER_GRACE,
        "{wait:?}"
    );
    // Handing it on does not end the grace: the lapsed holder's writes
    // may still be on their way.
    b.release(0).await.unwrap();
    a.acquire(0).await.unwrap().expect("released partition");
    assert!(a.load_wait(0).unwrap() > Duration::ZERO);

    // A partition released on purpose is loaded at once.
    a.acquire(1).await.unwrap().unwrap();
    a.release(1).await.unwrap();
    b.acquire(1).await.unwrap().expect("released partition");
    assert_eq!(b.load_wait(1), Some(Duration::ZERO));
}

#[tokio::test]
async fn an_outcome_not_written_yet_keeps_its_message_out_of_the_next_load() {
    let mut server = start(Persistence::AofAlways);
    let a = short_lease(&server, "a").await;
    take_all(&a).await;
    let id = a.accept(vec![sample_new(1)], 1).await[0]
        .as_ref()
        .unwrap()
        .id;
    let partition = a.partition_of(&ChatRef::Id(1));
    server.kill().unwrap();
    // Sent while Redis was away: the delivery cannot be written yet.
    assert!(matches!(
        a.record_delivered(id, "p".into(), None, 2).await,
        Err(StoreError::Unavailable(_))
    ));
    server.restart().unwrap();
    let_leases_expire().await;
    a.acquire(partition)
        .await
        .unwrap()
        .expect("its own lease back");
    assert!(a.pending_in(partition).await.unwrap().is_empty());
    a.record_delivered(id, "p".into(), None, 3).await.unwrap();
    assert_eq!(
        a.get(id).await.unwrap().unwrap().state,
        MessageState::Delivered
    );
}

/// Runs `transition.lua` directly: an empty record write that keeps the
/// message open, with the given version and lease claim.
async fn write_raw(
    store: &RedisStore,
    id: MessageId,
    version: &str,
    owner: &str,
    token: u64,
) -> Value {
    let mut call = store.inner.scripts.transition.prepare_invoke();
    call.arg(store.inner.keys.prefix())
        .arg(owner)
        .arg(1)
        .arg(id_hex(id))
        .arg(version)
        .arg(token)
        .arg(b"\x01{}".as_slice())
        .arg("")
        .arg("")
        .arg("stay")
        .arg(0);
    call.invoke_async(&mut store.conn().await.unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_write_script_itself_refuses_a_stale_token() {
    // The Rust side checks the lease it read with the message; this is the
    // check that remains when the lease changes between that read and the
    // write.
    let server = start(Persistence::None);
    let a = connect(&server, "a").await;
    take_all(&a).await;
    let id = accept_one(&a, sample_new(1), 1).await;
    let partition = a.partition_of(&ChatRef::Id(1));
    let token = a.held()[partition as usize].1;
    for (owner, token) in [("a", token + 1), ("b", token)] {
        let answer = write_raw(&a, id, "1", owner, token).await;
        assert_eq!(
            answer,
            Value::Array(vec![Value::Int(-1), Value::Int(1)]),
            "{owner} {token}"
        );
    }
    // A stale version is refused as well (someone else wrote first).
    assert_eq!(
        write_raw(&a, id, "7", "a", token).await,
        Value::Array(vec![Value::Int(-2), Value::Int(1)])
    );
    assert_eq!(
        a.get(id).await.unwrap().unwrap().msg,
        sample_new(1),
        "untouched"
    );
}

#[tokio::test]
async fn per_chat_order_holds_across_agents() {
    let server = start(Persistence::None);
    let a = connect(&server, "a").await;
    let b = connect(&server, "b").await;
    let text = |n: usize| {
        let mut m = sample_new(77);
        m.params.insert("text".into(), serde_json::json!(n));
        m
    };
    let mut accepted = Vec::new();
    for n in 0..10 {
        let agent = if n % 2 == 0 { &a } else { &b };
        accepted.push(accept_one(agent, text(n), 1).await);
    }
    let holder = connect(&server, "holder").await;
    let partition = holder.partition_of(&ChatRef::Id(77));
    holder.acquire(partition).await.unwrap().unwrap();
    let loaded = holder.pending_in(partition).await.unwrap();
    assert_eq!(loaded.iter().map(|m| m.id).collect::<Vec<_>>(), accepted);
    for (n, m) in loaded.iter().enumerate() {
        assert_eq!(m.msg.params["text"], serde_json::json!(n));
    }
}

#[tokio::test]
async fn ids_grow_in_accept_order_even_from_a_slow_clock() {
    // An agent whose clock is behind proposes smaller UUIDv7s; the script
    // replaces them with the partition's last id plus one.
    let server = start(Persistence::None);
    let store = connect(&server, "a").await;
    let first = accept_one(&store, sample_new(5), 1).await;
    let partition = store.partition_of(&ChatRef::Id(5));
    let accept_raw = |candidate: String| {
        let store = store.clone();
        async move {
            let mut call = store.inner.scripts.accept.prepare_invoke();
            call.arg(store.inner.keys.prefix())
                .arg(60_000)
                .arg(1)
                .arg(partition)
                .arg(candidate)
                .arg("")
                .arg(b"\x01{}".as_slice())
                .arg("pending.normal");
            let answer: Vec<Value> = call
                .invoke_async(&mut store.conn().await.unwrap())
                .await
                .unwrap();
            match &answer[0] {
                Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
                other => panic!("{other:?}"),
            }
        }
    };
    // A UUIDv7 from 1970 (timestamp 1 ms).
    let slow = accept_raw("00000000000170008000000000000000".into()).await;
    let expected = format!("{:032x}", first.as_u128() + 1);
    assert_eq!(slow, expected);

    // The low 48 bits carry into rand_a, keeping version and variant.
    let partition_meta = format!("{}pm:{partition}", store.inner.keys.prefix());
    let edge = "0190000000007abc8123ffffffffffff";
    let _: () = ::redis::cmd("HSET")
        .arg(&partition_meta)
        .arg("last")
        .arg(edge)
        .query_async(&mut store.conn().await.unwrap())
        .await
        .unwrap();
    let carried = accept_raw("00000000000170008000000000000000".into()).await;
    assert_eq!(carried, "0190000000007abd8123000000000000");
    let id = super::keys::parse_id(carried.as_bytes()).unwrap();
    assert!(id.as_u128() > u128::from_str_radix(edge, 16).unwrap());
}

#[tokio::test]
async fn the_feed_hands_out_other_agents_accepts_exactly_once() {
    let server = start(Persistence::None);
    let holder = connect(&server, "holder").await;
    let other = connect(&server, "other").await;
    let early = accept_one(&other, sample_new(1), 1).await;
    take_all(&holder).await;
    assert_eq!(
        holder
            .pending()
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        [early]
    );

    let batch = vec![sample_new(1), sample_new(2), sample_new(1), sample_new(3)];
    let late: Vec<MessageId> = other
        .accept(batch, 2)
        .await
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect();
    // The holder's own accepts come through the feed too.
    let own = accept_one(&holder, sample_new(2), 3).await;
    let mut seen = Vec::new();
    for _ in 0..20 {
        if seen.len() >= 5 {
            break;
        }
        seen.extend(
            holder
                .new_messages(Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    for (partition, m) in &seen {
        assert_eq!(*partition, holder.partition_of(&m.msg.chat_id));
        assert_eq!(m.state, MessageState::Pending);
    }
    let mut ids: Vec<MessageId> = seen.iter().map(|(_, m)| m.id).collect();
    ids.sort();
    let mut expected = late.clone();
    expected.push(own);
    expected.sort();
    assert_eq!(ids, expected);
    // Within a partition, the feed keeps accept order.
    let chat1: Vec<MessageId> = seen
        .iter()
        .filter(|(_, m)| m.msg.chat_id == ChatRef::Id(1))
        .map(|(_, m)| m.id)
        .collect();
    assert_eq!(chat1, [late[0], late[2]]);
    // Nothing twice.
    assert!(
        holder
            .new_messages(Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );

    // A dead letter put back by an operator anywhere reaches the holder.
    holder
        .record_dead_letter(early, attempt(4, "permanent"), "x".into())
        .await
        .unwrap();
    other.retry_dead(DeadSelection::One(early)).await.unwrap();
    let revived = holder
        .new_messages(Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(
        revived.iter().map(|(_, m)| m.id).collect::<Vec<_>>(),
        [early]
    );
}

#[tokio::test]
async fn a_lost_partition_leaves_the_feed_quietly() {
    let server = start(Persistence::None);
    let a = short_lease(&server, "a").await;
    let b = short_lease(&server, "b").await;
    a.acquire(2).await.unwrap().unwrap();
    a.pending_in(2).await.unwrap();
    let_leases_expire().await;
    b.acquire(2).await.unwrap().unwrap();
    b.pending_in(2).await.unwrap();
    let chat = (0..100)
        .map(ChatRef::Id)
        .find(|c| a.partition_of(c) == 2)
        .unwrap();
    let id = accept_one(
        &b,
        NewMessage {
            chat_id: chat,
            ..sample_new(0)
        },
        1,
    )
    .await;
    assert!(
        a.new_messages(Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(a.held().is_empty());
    let got = b.new_messages(Duration::from_millis(500)).await.unwrap();
    assert_eq!(got.iter().map(|(_, m)| m.id).collect::<Vec<_>>(), [id]);
    // Holding nothing, the feed just waits.
    assert!(
        a.new_messages(Duration::from_millis(10))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn connect_checks_the_layout_and_partition_count() {
    let server = start(Persistence::None);
    connect(&server, "a").await;
    let other_count = RedisStore::connect(RedisOptions {
        partitions: PARTITIONS * 2,
        ..options(&server, "b")
    })
    .await;
    assert!(matches!(other_count, Err(StoreError::Inconsistent(_))));
    // Another prefix is another queue.
    RedisStore::connect(RedisOptions {
        partitions: PARTITIONS * 2,
        key_prefix: "other".into(),
        ..options(&server, "b")
    })
    .await
    .unwrap();
    let _: () = ::redis::cmd("HSET")
        .arg("t:layout")
        .arg("version")
        .arg(99)
        .query_async(&mut connect(&server, "c").await.conn().await.unwrap())
        .await
        .unwrap();
    assert!(matches!(
        RedisStore::connect(options(&server, "d")).await,
        Err(StoreError::UnsupportedLayout {
            found: 99,
            supported: 1
        })
    ));
}

#[tokio::test]
async fn a_server_that_may_evict_is_refused() {
    let server = start(Persistence::None);
    let store = connect(&server, "a").await;
    let _: () = ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut store.conn().await.unwrap())
        .await
        .unwrap();
    let refused = RedisStore::connect(options(&server, "b")).await;
    assert!(matches!(refused, Err(StoreError::Storage(ref e)) if e.contains("noeviction")));
}

#[tokio::test]
async fn durability_is_read_from_the_server() {
    let plain = start(Persistence::None);
    assert_eq!(
        connect(&plain, "a").await.durability(),
        super::Durability::NoAof
    );
    let everysec = start(Persistence::AofEverySec);
    assert_eq!(
        connect(&everysec, "a").await.durability(),
        super::Durability::AofEverySec
    );
}

#[tokio::test]
async fn the_password_never_shows() {
    let server = start(Persistence::None);
    let secret = "hunter2-not-for-logs";
    // A server without a password refuses AUTH; a closed port refuses the
    // connection; a malformed URL fails to parse. None may echo the secret.
    let urls = [
        format!("redis://:{secret}@127.0.0.1:{}/", server.port()),
        format!("redis://user:{secret}@127.0.0.1:1/"),
        format!("redis://:{secret}@[bad-host/"),
    ];
    for url in urls {
        let opts = RedisOptions {
            command_timeout: Duration::from_millis(500),
            ..RedisOptions::new(url, "a")
        };
        assert!(!format!("{opts:?}").contains(secret));
        let err = RedisStore::connect(opts).await.unwrap_err();
        assert!(!err.to_string().contains(secret), "{err}");
        assert!(!format!("{err:?}").contains(secret), "{err:?}");
    }
    let store = connect(&server, "a").await;
    assert!(!format!("{store:?}").contains("127.0.0.1"));
}

#[tokio::test]
async fn a_stopped_server_is_unavailable_not_corrupt() {
    let server = start(Persistence::None);
    let store = RedisStore::connect(RedisOptions {
        command_timeout: Duration::from_millis(300),
        ..options(&server, "a")
    })
    .await
    .unwrap();
    server.pause().unwrap();
    let answers = store.accept(vec![sample_new(1)], 1).await;
    assert!(
        matches!(answers[0], Err(StoreError::Unavailable(_))),
        "{answers:?}"
    );
    server.resume().unwrap();
}

#[tokio::test]
async fn a_multi_message_write_is_all_or_nothing() {
    use super::rules;
    use super::write::{Outcome, Write};
    let server = start(Persistence::None);
    let store = connect(&server, "a").await;
    take_all(&store).await;
    let ids: Vec<MessageId> = store
        .accept(vec![sample_new(1), sample_new(2)], 1)
        .await
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect();
    for id in &ids {
        store
            .record_dead_letter(*id, attempt(2, "permanent"), "x".into())
            .await
            .unwrap();
    }
    let dead = [
        store.get(ids[0]).await.unwrap().unwrap(),
        store.get(ids[1]).await.unwrap().unwrap(),
    ];
    // Each was written twice (accept, dead letter): version 2. The second
    // claims a version it does not have.
    let writes = [
        Write {
            old: &dead[0],
            version: "2",
            token: None,
            change: rules::retry_dead(&dead[0]).unwrap(),
        },
        Write {
            old: &dead[1],
            version: "1",
            token: None,
            change: rules::retry_dead(&dead[1]).unwrap(),
        },
    ];
    assert_eq!(store.write_all(&writes).await.unwrap(), Outcome::Changed(1));
    assert_eq!(store.get(ids[0]).await.unwrap().unwrap(), dead[0]);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.dead, stats.open_total()), (2, 0));
    // With the right versions both go through.
    let writes = dead.each_ref().map(|m| Write {
        old: m,
        version: "2",
        token: None,
        change: rules::retry_dead(m).unwrap(),
    });
    assert_eq!(store.write_all(&writes).await.unwrap(), Outcome::Written);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.dead, stats.open_total()), (0, 2));
}

#[tokio::test]
async fn a_handle_made_while_redis_is_away_works_once_it_answers() {
    let mut server = start(Persistence::AofAlways);
    server.kill().unwrap();
    let store = RedisStore::connect_lazy(options(&server, "a")).unwrap();
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.acquire(0).await,
        Err(StoreError::Unavailable(_))
    ));
    server.restart().unwrap();
    // The checks run at the first command that reaches the server.
    store.ping().await.unwrap();
    assert_eq!(store.durability(), super::Durability::AofAlways);
    take_all(&store).await;
    let id = store.accept(vec![sample_new(1)], 1).await[0]
        .as_ref()
        .unwrap()
        .id;
    assert!(store.get(id).await.unwrap().is_some());
}
