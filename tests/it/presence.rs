//! Presence in protocol v2 (docs/PROTOCOL.md, "Presence"): snapshots, joins and leaves on one
//! node (named, anonymous, two connections of one member, watchers and non-watchers), the
//! settings' refusals, and presence across nodes of one database through PostgreSQL: in NOTIFY
//! and WAL mode, a clean stop (`bye`), a node killed with SIGKILL (its members leave with
//! `node_lost` within the stated bound), and the re-sync after this node's own outage. Member
//! states (`presence_set`) on one node and across two (NOTIFY and WAL), with their refusals.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::common::*;

/// The heartbeat interval of these tests (ms).
const INTERVAL_MS: u64 = 1000;
const INTERVAL: &str = "1000";

/// Opens a v2 socket with `claims` at the server `s_url` and reads its `welcome`.
async fn v2(s_url: &str, claims: Value) -> Ws {
    open_v2_url(&format!("{s_url}/{}", token(claims))).await.0
}

fn base(s: &TestServer) -> String {
    s.url("").trim_end_matches('/').to_string()
}

/// Subscribes to `channel` (asking for presence or not) and reads the `subscribed` answer, and
/// with presence the snapshot that must follow it at once.
async fn join(ws: &mut Ws, channel: &str, presence: bool) -> Option<Value> {
    send(
        ws,
        &json!({"type":"subscribe","id":1,"channel":channel,"presence":presence}).to_string(),
    )
    .await;
    let answer = next_json(ws).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    if !presence {
        return None;
    }
    let snap = next_json(ws).await;
    assert_eq!(
        snap["type"], "presence",
        "the snapshot follows subscribed: {snap}"
    );
    assert_eq!(snap["channel"], channel);
    assert!(snap.get("position").is_none());
    Some(snap)
}

/// The next presence event (join, leave or presence), skipping nothing else: any other frame
/// fails the test.
async fn event(ws: &mut Ws) -> Value {
    let v = next_json(ws).await;
    assert!(
        ["join", "leave", "presence", "presence_state"].contains(&v["type"].as_str().unwrap_or("")),
        "{v}"
    );
    v
}

/// Asserts that nothing is queued for the socket: a ping's pong is the next frame.
async fn quiet(ws: &mut Ws) {
    send(ws, &json!({"type":"ping","id":"q"}).to_string()).await;
    let v = next_json(ws).await;
    assert_eq!(v["type"], "pong", "nothing else was queued: {v}");
}

/// A channel's presence as a watcher sees it, kept from its snapshot and events.
#[derive(Debug, Default, Clone, PartialEq)]
struct View {
    members: BTreeMap<String, u64>,
    states: BTreeMap<String, Value>,
    anonymous: u64,
    count: u64,
}

impl View {
    fn of(snapshot: &Value) -> Self {
        let mut v = View {
            anonymous: snapshot["anonymous"].as_u64().unwrap(),
            count: snapshot["count"].as_u64().unwrap(),
            ..View::default()
        };
        for (k, n) in snapshot["members"].as_object().unwrap() {
            v.members.insert(k.clone(), n.as_u64().unwrap());
        }
        for (k, state) in snapshot["states"].as_object().unwrap() {
            assert!(v.members.contains_key(k), "a state of a member: {snapshot}");
            v.states.insert(k.clone(), state.clone());
        }
        v.check();
        v
    }

    /// Applies an event; checks its `count` against the sum.
    fn apply(&mut self, e: &Value) {
        if e["type"] == "presence" {
            *self = Self::of(e);
            return;
        }
        if e["type"] == "presence_state" {
            let m = e["member"].as_str().unwrap();
            assert!(self.named(m) > 0, "a state of a present member: {e}");
            match &e["state"] {
                Value::Null => self.states.remove(m),
                state => self.states.insert(m.to_string(), state.clone()),
            };
            return;
        }
        let n = e["connections"].as_u64().unwrap();
        assert!(n >= 1, "{e}");
        let slot = match e["member"].as_str() {
            Some(m) => self.members.entry(m.to_string()).or_insert(0),
            None => &mut self.anonymous,
        };
        if e["type"] == "join" {
            *slot += n;
        } else {
            assert!(*slot >= n, "{e} on {self:?}");
            *slot -= n;
        }
        self.members.retain(|_, n| *n > 0);
        // A member gone has no state.
        let members = &self.members;
        self.states.retain(|m, _| members.contains_key(m));
        self.count = e["count"].as_u64().unwrap();
        self.check();
    }

    fn check(&self) {
        assert_eq!(
            self.count,
            self.anonymous + self.members.values().sum::<u64>(),
            "count is the total: {self:?}"
        );
    }

    fn named(&self, m: &str) -> u64 {
        self.members.get(m).copied().unwrap_or(0)
    }

    fn state(&self, m: &str) -> Option<&Value> {
        self.states.get(m)
    }
}

/// Sends `presence_set` of `state` on `channel` and returns the answer (skipping the presence
/// events a watching socket gets meanwhile: its own `presence_state` comes first).
async fn set_state(ws: &mut Ws, channel: &str, state: Value) -> Value {
    send(
        ws,
        &json!({"type":"presence_set","id":"s","channel":channel,"state":state}).to_string(),
    )
    .await;
    loop {
        let v = next_json(ws).await;
        if !["presence_state", "join", "leave"].contains(&v["type"].as_str().unwrap_or("")) {
            assert_eq!(v["id"], "s", "{v}");
            return v;
        }
    }
}

/// Reads events into `view` until `done` holds (within [`WAIT`]); returns the events read.
async fn until(ws: &mut Ws, view: &mut View, done: impl Fn(&View) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    while !done(view) {
        let e = event(ws).await;
        view.apply(&e);
        seen.push(e);
    }
    seen
}

#[tokio::test]
async fn snapshot_join_and_leave_on_one_node() {
    let s = start(&["--presence-interval", INTERVAL]).await;
    let url = base(&s);
    let mut w1 = v2(&url, json!({"mode":"r","sub":"alice"})).await;
    let snap = join(&mut w1, "chat", true).await.unwrap();
    assert_eq!(
        snap,
        json!({"type":"presence","channel":"chat","members":{"alice":1},"states":{},"anonymous":0,"count":1})
    );
    // A second connection of alice that does not watch: counted, told nothing.
    let mut w2 = v2(&url, json!({"mode":"r","sub":"alice"})).await;
    assert_eq!(join(&mut w2, "chat", false).await, None);
    assert_eq!(
        event(&mut w1).await,
        json!({"type":"join","channel":"chat","member":"alice","connections":1,"count":2})
    );
    // Anonymous: no claim, and a claim that is not a string.
    let mut w3 = v2(&url, json!({"mode":"r"})).await;
    let snap = join(&mut w3, "chat", true).await.unwrap();
    assert_eq!(
        snap,
        json!({"type":"presence","channel":"chat","members":{"alice":2},"states":{},"anonymous":1,"count":3})
    );
    assert_eq!(
        event(&mut w1).await,
        json!({"type":"join","channel":"chat","member":null,"connections":1,"count":3})
    );
    let mut w4 = v2(&url, json!({"mode":"r","sub":7})).await;
    join(&mut w4, "chat", false).await;
    for w in [&mut w1, &mut w3] {
        assert_eq!(
            event(w).await,
            json!({"type":"join","channel":"chat","member":null,"connections":1,"count":4})
        );
    }
    // Another channel's presence is its own.
    let mut w5 = v2(&url, json!({"mode":"r","sub":"bob"})).await;
    let snap = join(&mut w5, "other", true).await.unwrap();
    assert_eq!(snap["count"], 1);
    // Unsubscribe: a leave for the watchers, nothing for the one who left.
    send(
        &mut w2,
        &json!({"type":"unsubscribe","id":2,"channel":"chat"}).to_string(),
    )
    .await;
    assert_eq!(next_json(&mut w2).await["type"], "unsubscribed");
    let leave = json!({"type":"leave","channel":"chat","member":"alice","connections":1,"count":3,"reason":"left"});
    assert_eq!(event(&mut w1).await, leave);
    assert_eq!(event(&mut w3).await, leave);
    // A closed socket leaves too.
    w4.close(None).await.unwrap();
    let leave = json!({"type":"leave","channel":"chat","member":null,"connections":1,"count":2,"reason":"left"});
    assert_eq!(event(&mut w1).await, leave);
    assert_eq!(event(&mut w3).await, leave);
    // Re-subscribing with presence shows the current state.
    let snap = join(&mut w2, "chat", true).await.unwrap();
    assert_eq!(
        snap,
        json!({"type":"presence","channel":"chat","members":{"alice":2},"states":{},"anonymous":1,"count":3})
    );
    assert_eq!(event(&mut w1).await["count"], 3);
    assert_eq!(event(&mut w3).await["count"], 3);
    for w in [&mut w1, &mut w2, &mut w3, &mut w5] {
        quiet(w).await;
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn presence_member_type_and_presence_disabled() {
    let s = start(&[]).await;
    let mut ws = v2(&base(&s), json!({"mode":"r","sub":"alice"})).await;
    for bad in [json!("yes"), json!(1), json!({}), json!([true])] {
        send(
            &mut ws,
            &json!({"type":"subscribe","id":"b","channel":"chat","presence":bad}).to_string(),
        )
        .await;
        let v = next_json(&mut ws).await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{v}"
        );
        assert_eq!(v["id"], "b");
    }
    // Nothing was subscribed by the refusals.
    assert!(join(&mut ws, "chat", true).await.is_some());
    s.stop().await.unwrap();

    let s = start(&["--presence", "false"]).await;
    let mut ws = v2(&base(&s), json!({"mode":"r","sub":"alice"})).await;
    send(
        &mut ws,
        &json!({"type":"subscribe","id":"p","channel":"chat","presence":true}).to_string(),
    )
    .await;
    let v = next_json(&mut ws).await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "presence_disabled");
    assert_eq!(v["id"], "p");
    // Without presence the subscription works, and no presence frame ever comes.
    assert_eq!(join(&mut ws, "chat", false).await, None);
    let mut other = v2(&base(&s), json!({"mode":"r","sub":"bob"})).await;
    join(&mut other, "chat", false).await;
    quiet(&mut ws).await;
    s.stop().await.unwrap();
}

/// Two nodes on one database: joins and leaves on one are seen on the other, and a node that
/// stops cleanly takes its members away at once (reason `left`).
async fn two_nodes(extra: &[&str]) {
    let db = fresh_db().await;
    let mut flags = vec!["--presence-interval", INTERVAL];
    flags.extend_from_slice(extra);
    let a = start_on(&db, &flags).await;
    let b = start_on(&db, &flags).await;
    let mut watcher = v2(&base(&b), json!({"mode":"r","sub":"watcher"})).await;
    let mut view = View::of(&join(&mut watcher, "room", true).await.unwrap());
    let mut alice = v2(&base(&a), json!({"mode":"r","sub":"alice"})).await;
    join(&mut alice, "room", false).await;
    let mut anon = v2(&base(&a), json!({"mode":"r"})).await;
    join(&mut anon, "room", false).await;
    until(&mut watcher, &mut view, |v| {
        v.named("alice") == 1 && v.anonymous == 1
    })
    .await;
    assert_eq!(view.named("watcher"), 1);
    assert_eq!(view.count, 3);
    // A watcher on A sees B's member in its snapshot.
    let mut on_a = v2(&base(&a), json!({"mode":"r","sub":"carol"})).await;
    let mut view_a = View::of(&join(&mut on_a, "room", true).await.unwrap());
    until(&mut on_a, &mut view_a, |v| {
        v.named("watcher") == 1 && v.count == 4
    })
    .await;
    until(&mut watcher, &mut view, |v| v.named("carol") == 1).await;
    // A leave on A is a leave on B.
    send(
        &mut alice,
        &json!({"type":"unsubscribe","id":2,"channel":"room"}).to_string(),
    )
    .await;
    let seen = until(&mut watcher, &mut view, |v| v.named("alice") == 0).await;
    let last = seen.last().unwrap();
    assert_eq!(last["type"], "leave");
    assert_eq!(last["reason"], "left");
    // A clean stop says goodbye: its members leave with `left`, without waiting for silence.
    drop(on_a);
    let stopped = Instant::now();
    // (The stop waits for its sockets' close handshakes: run it beside.)
    let stopping = tokio::spawn(a.stop());
    let seen = until(&mut watcher, &mut view, |v| v.count == 1).await;
    assert!(
        seen.iter()
            .filter(|e| e["type"] == "leave")
            .all(|e| e["reason"] == "left"),
        "{seen:?}"
    );
    assert!(
        stopped.elapsed() < Duration::from_millis(3 * INTERVAL_MS),
        "goodbye, not silence: {:?}",
        stopped.elapsed()
    );
    assert_eq!(view.named("watcher"), 1);
    drop((alice, anon));
    stopping.await.unwrap().unwrap();
    quiet(&mut watcher).await;
    b.stop().await.unwrap();
}

#[tokio::test]
async fn presence_across_two_nodes() {
    two_nodes(&[]).await;
}

#[tokio::test]
async fn presence_across_two_nodes_in_direct_mode() {
    two_nodes(&["--channel-mode", "direct"]).await;
}

#[tokio::test]
async fn presence_across_two_wal_nodes() {
    two_nodes(&["--source", "wal"]).await;
}

/// `pgws` as a child process on `db`, with the test secret, presence interval and listen
/// channel of these tests; returns it and its address once it listens.
async fn child(db: &str, extra: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgws"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("PGWS_DB_URI", db)
        .env("PGWS_JWT_SECRET", SECRET)
        .env("PGWS_HOST", "127.0.0.1")
        .env("PGWS_PORT", "0")
        .env("PGWS_LISTEN_CHANNEL", LISTEN)
        .env("PGWS_POOL_SIZE", "2")
        .env("PGWS_PRESENCE_INTERVAL", INTERVAL);
    for (k, v) in extra {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pgws");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Listening on port") {
                return line.rsplit(' ').next().unwrap().to_string();
            }
        }
        panic!("pgws ended before listening");
    })
    .await
    .expect("pgws listens in time");
    // Keep reading its output, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("ws://127.0.0.1:{port}"))
}

/// The bound stated in docs/ARCHITECTURE.md: a killed node's members leave the others'
/// presence, with `node_lost`, more than 2 and less than 4 intervals after the kill (3 intervals
/// of silence after its last heartbeat, which is at most one interval old, checked every quarter
/// interval).
async fn killed_node(extra_server: &[&str], extra_child: &[(&str, &str)]) {
    let db = fresh_db().await;
    let mut flags = vec!["--presence-interval", INTERVAL];
    flags.extend_from_slice(extra_server);
    let b = start_on(&db, &flags).await;
    let (mut doomed, url) = child(&db, extra_child).await;
    let mut watcher = v2(&base(&b), json!({"mode":"r","sub":"watcher"})).await;
    let mut view = View::of(&join(&mut watcher, "room", true).await.unwrap());
    // Two connections of alice, one anonymous, on the node to be killed (it must be receiving
    // before they join: a node opens sockets once its source is up).
    let mut held = Vec::new();
    for claims in [
        json!({"mode":"r","sub":"alice"}),
        json!({"mode":"r","sub":"alice"}),
        json!({"mode":"r"}),
    ] {
        let mut ws = v2(&url, claims).await;
        join(&mut ws, "room", true).await;
        held.push(ws);
    }
    until(&mut watcher, &mut view, |v| {
        v.named("alice") == 2 && v.anonymous == 1
    })
    .await;
    let pid = doomed.id().expect("running").to_string();
    let killed = Instant::now();
    let status = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let seen = until(&mut watcher, &mut view, |v| v.count == 1).await;
    let elapsed = killed.elapsed();
    let _ = doomed.wait().await;
    eprintln!("members of the killed node left after {elapsed:?}");
    assert!(!seen.is_empty());
    for e in &seen {
        assert_eq!(e["type"], "leave", "{e}");
        assert_eq!(e["reason"], "node_lost", "{e}");
    }
    assert_eq!(view.named("watcher"), 1);
    let interval = Duration::from_millis(INTERVAL_MS);
    assert!(
        elapsed <= interval * 4,
        "members of a killed node leave within 4 intervals: {elapsed:?}"
    );
    assert!(
        elapsed >= interval * 19 / 10,
        "and not before 3 intervals of silence: {elapsed:?}"
    );
    quiet(&mut watcher).await;
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_killed_node_is_lost_within_the_bound() {
    killed_node(&[], &[]).await;
}

#[tokio::test]
async fn a_killed_wal_node_is_lost_within_the_bound() {
    killed_node(&["--source", "wal"], &[("PGWS_SOURCE", "wal")]).await;
}

/// After this node's LISTEN connection was lost and came back, presence watchers get the gap
/// and then a fresh snapshot (what the other nodes said meanwhile is lost).
#[tokio::test]
async fn presence_is_sent_again_after_an_outage() {
    let db_uri = fresh_db().await;
    let mut s = start_on(
        &db_uri,
        &[
            "--presence-interval",
            INTERVAL,
            "--check-listener-interval",
            "200",
        ],
    )
    .await;
    let db = pg(&db_uri).await;
    let mut ws = v2(&base(&s), json!({"mode":"r","sub":"alice"})).await;
    join(&mut ws, "chat", true).await;
    kill_listener(&db).await;
    // (The reconnection may be quicker than a look at the status: wait for its result.)
    s.wait_listening(2).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "source_outage");
    let snap = next_json(&mut ws).await;
    assert_eq!(
        snap,
        json!({"type":"presence","channel":"chat","members":{"alice":1},"states":{},"anonymous":0,"count":1})
    );
    s.stop().await.unwrap();
}

/// The presence metrics count what the nodes said and lost.
#[tokio::test]
async fn presence_metrics() {
    let db = fresh_db().await;
    let flags = [
        "--presence-interval",
        INTERVAL,
        "--admin-address",
        "127.0.0.1:0",
    ];
    let a = start_on(&db, &flags).await;
    let b = start_on(&db, &flags).await;
    // A node without v2 subscriptions says nothing (compat sockets are not members).
    let pg_client = pg(&db).await;
    let mut compat = connect(&a.url(&format!("/lobby/{}", token(json!({"mode":"r"}))))).await;
    notify(&pg_client, LISTEN, r#"{"channel":"lobby","n":1}"#).await;
    next_text(&mut compat).await;
    assert_eq!(a.metric("pgws_presence_sent_total").await, 0.0);
    let mut watcher = v2(&base(&b), json!({"mode":"r","sub":"w"})).await;
    let mut view = View::of(&join(&mut watcher, "room", true).await.unwrap());
    let mut alice = v2(&base(&a), json!({"mode":"r","sub":"alice"})).await;
    join(&mut alice, "room", false).await;
    until(&mut watcher, &mut view, |v| v.named("alice") == 1).await;
    assert_eq!(b.metric("pgws_presence_nodes ").await, 1.0);
    assert!(b.metric("pgws_presence_received_total").await >= 1.0);
    // hello, the delta, the state.
    assert!(a.metric("pgws_presence_sent_total").await >= 3.0);
    // Its last member gone, A says goodbye: B forgets it without counting a loss.
    drop(alice);
    until(&mut watcher, &mut view, |v| v.named("alice") == 0).await;
    let deadline = Instant::now() + WAIT;
    while b.metric("pgws_presence_nodes ").await != 0.0 {
        assert!(Instant::now() < deadline, "B forgets A after its bye");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.metric("pgws_presence_nodes_lost_total").await, 0.0);
    drop(compat);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// What another node says on the bus (here: written by hand with `pg_notify`): its state is
/// authoritative (a member missing from it leaves), deltas move counts, its silence drops it,
/// and no control message ever reaches a client, compat or v2.
#[tokio::test]
async fn a_nodes_heartbeat_is_authoritative_and_control_messages_are_never_delivered() {
    let db_uri = fresh_db().await;
    let s = start_on(&db_uri, &["--presence-interval", INTERVAL]).await;
    let db = pg(&db_uri).await;
    // A compat socket on the listen channel's own name: where an unrouted control message
    // would go.
    let mut compat = connect(&s.url(&format!("/{LISTEN}/{}", token(json!({"mode":"r"}))))).await;
    let mut watcher = v2(&base(&s), json!({"mode":"r","sub":"w"})).await;
    let mut view = View::of(&join(&mut watcher, "room", true).await.unwrap());
    let say = |op: String| {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        format!(
            r#"{{"pgws_control":"presence","node":"forged","n":1,"ts":{ts},"i":{INTERVAL},{op}}}"#
        )
    };
    let state = say(
        r#""op":"state","seq":1,"part":0,"parts":1,"s":[["room",[["x",2],["y",1],[null,1]]]]"#
            .into(),
    );
    notify(&db, LISTEN, &state).await;
    until(&mut watcher, &mut view, |v| v.count == 5).await;
    assert_eq!(
        (view.named("x"), view.named("y"), view.anonymous),
        (2, 1, 1)
    );
    notify(
        &db,
        LISTEN,
        &say(r#""op":"delta","d":[["room","z",1]]"#.into()),
    )
    .await;
    until(&mut watcher, &mut view, |v| v.named("z") == 1).await;
    // The next state does not name y nor z: they leave (reason left), x's count follows it.
    let state =
        say(r#""op":"state","seq":2,"part":0,"parts":1,"s":[["room",[["x",1],[null,1]]]]"#.into());
    notify(&db, LISTEN, &state).await;
    let seen = until(&mut watcher, &mut view, |v| v.count == 3).await;
    assert!(
        seen.iter()
            .all(|e| e["type"] == "leave" && e["reason"] == "left"),
        "{seen:?}"
    );
    assert_eq!(
        (view.named("x"), view.named("y"), view.named("z")),
        (1, 0, 0)
    );
    // Garbage with the prefix is dropped too, and does not disturb anything.
    notify(&db, LISTEN, r#"{"pgws_control":"presence","node":7}"#).await;
    // Silence: the forged node is lost, its members leave with node_lost.
    let seen = until(&mut watcher, &mut view, |v| v.count == 1).await;
    assert!(seen.iter().all(|e| e["reason"] == "node_lost"), "{seen:?}");
    // An ordinary message on the listen channel still reaches the compat socket, and is the
    // first thing it receives.
    notify(&db, LISTEN, "plain").await;
    assert_eq!(next_text(&mut compat).await, "plain");
    quiet(&mut watcher).await;
    s.stop().await.unwrap();
}

/// `PGWS_PRESENCE_CLAIM` names members; names too long are anonymous; a subscription a refresh
/// removes leaves the channel's presence (reason `left`).
#[tokio::test]
async fn the_claim_long_names_and_refresh() {
    let s = start(&["--presence-claim", "name"]).await;
    let url = base(&s);
    let mut watcher = v2(&url, json!({"mode":"r","name":"w","sub":"w"})).await;
    let mut view = View::of(&join(&mut watcher, "room", true).await.unwrap());
    assert_eq!(view.named("w"), 1);
    let claims = |channels: Value| json!({"mode":"r","sub":"s1","name":"ann","channels":channels});
    let mut ann = v2(&url, claims(json!(["room", "other"]))).await;
    join(&mut ann, "room", false).await;
    let e = event(&mut watcher).await;
    assert_eq!(e["member"], "ann", "the claim, not sub: {e}");
    view.apply(&e);
    let mut long = v2(&url, json!({"mode":"r","name":"x".repeat(129)})).await;
    join(&mut long, "room", false).await;
    let e = event(&mut watcher).await;
    assert_eq!(
        e,
        json!({"type":"join","channel":"room","member":null,"connections":1,"count":3})
    );
    view.apply(&e);
    // A refresh whose grant no longer names the channel: `left` for ann, a leave for the others.
    send(
        &mut ann,
        &json!({"type":"refresh","id":"r","token":token(claims(json!(["other"])))}).to_string(),
    )
    .await;
    let left = next_json(&mut ann).await;
    assert_eq!(
        (left["type"].as_str(), left["channel"].as_str()),
        (Some("left"), Some("room"))
    );
    assert_eq!(next_json(&mut ann).await["type"], "refreshed");
    assert_eq!(
        event(&mut watcher).await,
        json!({"type":"leave","channel":"room","member":"ann","connections":1,"count":2,"reason":"left"})
    );
    quiet(&mut watcher).await;
    s.stop().await.unwrap();
}

/// Member states on one node: set, seen by every watcher (the setter's own first, then its
/// answer), replaced, in the snapshot of a new watcher, cleared by `null` and by the member's
/// last leave; the refusals.
#[tokio::test]
async fn member_states_on_one_node() {
    let s = start(&["--presence-interval", INTERVAL]).await;
    let url = base(&s);
    let mut bob = v2(&url, json!({"mode":"r","sub":"bob"})).await;
    let mut view = View::of(&join(&mut bob, "chat", true).await.unwrap());
    let mut a1 = v2(&url, json!({"mode":"r","sub":"alice"})).await;
    join(&mut a1, "chat", true).await;
    let mut a2 = v2(&url, json!({"mode":"r","sub":"alice"})).await;
    join(&mut a2, "chat", false).await;
    until(&mut bob, &mut view, |v| v.named("alice") == 2).await;
    assert_eq!(event(&mut a1).await["type"], "join");
    // The watching setter: its event, then its answer.
    send(
        &mut a1,
        &json!({"type":"presence_set","id":1,"channel":"chat","state":{"typing":true}}).to_string(),
    )
    .await;
    let mine =
        json!({"type":"presence_state","channel":"chat","member":"alice","state":{"typing":true}});
    assert_eq!(next_json(&mut a1).await, mine);
    assert_eq!(
        next_json(&mut a1).await,
        json!({"type":"presence_set","id":1,"channel":"chat"})
    );
    assert_eq!(event(&mut bob).await, mine);
    // Another connection of alice (not watching) replaces it.
    let ok = set_state(&mut a2, "chat", json!({"cursor":[3, 4]})).await;
    assert_eq!(ok["type"], "presence_set", "{ok}");
    let e = event(&mut bob).await;
    view.apply(&e);
    assert_eq!(view.state("alice"), Some(&json!({"cursor":[3,4]})));
    assert_eq!(event(&mut a1).await, e);
    // A new watcher sees it in its snapshot.
    let mut carol = v2(&url, json!({"mode":"r","sub":"carol"})).await;
    let snap = join(&mut carol, "chat", true).await.unwrap();
    assert_eq!(snap["states"], json!({"alice":{"cursor":[3,4]}}));
    for w in [&mut bob, &mut a1] {
        assert_eq!(event(w).await["member"], "carol");
    }
    // `null` clears it: told, and gone from snapshots.
    assert_eq!(
        set_state(&mut a2, "chat", Value::Null).await["type"],
        "presence_set"
    );
    for w in [&mut bob, &mut a1, &mut carol] {
        assert_eq!(
            event(w).await,
            json!({"type":"presence_state","channel":"chat","member":"alice","state":null})
        );
    }
    set_state(&mut a2, "chat", json!("away")).await;
    for w in [&mut bob, &mut a1, &mut carol] {
        assert_eq!(event(w).await["state"], "away");
    }
    // One connection leaves: the state stays. The last leaves: only its leave is told.
    drop(a2);
    for w in [&mut bob, &mut carol] {
        let e = event(w).await;
        assert_eq!(
            (e["type"].as_str(), e["connections"].as_u64()),
            (Some("leave"), Some(1))
        );
    }
    assert_eq!(event(&mut a1).await["type"], "leave");
    let snap = join(
        &mut v2(&url, json!({"mode":"r","sub":"dave"})).await,
        "chat",
        true,
    )
    .await
    .unwrap();
    assert_eq!(snap["states"], json!({"alice":"away"}));
    for w in [&mut bob, &mut carol, &mut a1] {
        // dave joined and left (his socket was dropped).
        assert_eq!(event(w).await["type"], "join");
        assert_eq!(event(w).await["type"], "leave");
    }
    drop(a1);
    for w in [&mut bob, &mut carol] {
        assert_eq!(event(w).await["type"], "leave");
        quiet(w).await;
    }
    let mut a3 = v2(&url, json!({"mode":"r","sub":"alice"})).await;
    let snap = join(&mut a3, "chat", true).await.unwrap();
    assert_eq!(
        snap["states"],
        json!({}),
        "cleared with her last connection"
    );

    // Refusals: each an error with its code, and nothing told.
    let refused = |v: &Value, code: &str| {
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some(code)),
            "{v}"
        );
        assert_eq!(v["id"], "s");
    };
    refused(
        &set_state(&mut a3, "other", json!(1)).await,
        "not_subscribed",
    );
    let big = "x".repeat(1024 - 1);
    refused(&set_state(&mut a3, "chat", json!(big)).await, "too_large");
    let just = "x".repeat(1024 - 2);
    assert_eq!(
        set_state(&mut a3, "chat", json!(just)).await["type"],
        "presence_set"
    );
    let mut anon = v2(&url, json!({"mode":"r"})).await;
    join(&mut anon, "chat", false).await;
    refused(&set_state(&mut anon, "chat", json!(1)).await, "anonymous");
    // The rate: a burst of 10, then 10 a second.
    let started = Instant::now();
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..30 {
        let v = set_state(&mut a3, "chat", json!(i)).await;
        match v["type"].as_str() {
            Some("presence_set") => ok += 1,
            _ => {
                refused(&v, "rate_limited");
                limited += 1;
            }
        }
    }
    let allowed = 9 + (started.elapsed().as_secs_f64() * 10.0).ceil() as u32 + 1;
    assert!(
        limited > 0 && ok <= allowed,
        "ok {ok}, limited {limited}, allowed {allowed}"
    );
    let bad = json!({"type":"presence_set","id":"b","channel":7}).to_string();
    send(&mut a3, &bad).await;
    assert_eq!(next_json(&mut a3).await["code"], "bad_request");
    drop((bob, carol, anon, a3));
    s.stop().await.unwrap();

    let s = start(&["--presence", "false"]).await;
    let mut ws = v2(&base(&s), json!({"mode":"r","sub":"alice"})).await;
    join(&mut ws, "chat", false).await;
    refused(
        &set_state(&mut ws, "chat", json!(1)).await,
        "presence_disabled",
    );
    s.stop().await.unwrap();
}

/// Two nodes: a state set on one is seen on the other (event and snapshot), the newer of two
/// writers on two nodes wins everywhere, and when the newer writer's node loses her
/// connections the other node's state is hers again; her last leave takes it away. With a
/// 10 s heartbeat, so that seeing a set within 3 s shows the `set` message, not a heartbeat.
async fn two_node_states(extra: &[&str]) {
    let db = fresh_db().await;
    let mut flags = vec!["--presence-interval", "10000"];
    flags.extend_from_slice(extra);
    let a = start_on(&db, &flags).await;
    let b = start_on(&db, &flags).await;
    let mut on_b = v2(&base(&b), json!({"mode":"r","sub":"watcher"})).await;
    let mut view_b = View::of(&join(&mut on_b, "room", true).await.unwrap());
    let mut alice_a = v2(&base(&a), json!({"mode":"r","sub":"alice"})).await;
    join(&mut alice_a, "room", false).await;
    until(&mut on_b, &mut view_b, |v| v.named("alice") == 1).await;
    let quick = Duration::from_secs(3);
    let set_at = Instant::now();
    assert_eq!(
        set_state(&mut alice_a, "room", json!({"name":"Alice"})).await["type"],
        "presence_set"
    );
    until(&mut on_b, &mut view_b, |v| v.state("alice").is_some()).await;
    assert!(set_at.elapsed() < quick, "{:?}", set_at.elapsed());
    assert_eq!(view_b.state("alice"), Some(&json!({"name":"Alice"})));
    // A new watcher on B has it in its snapshot.
    let mut on_b2 = v2(&base(&b), json!({"mode":"r","sub":"w2"})).await;
    let snap = join(&mut on_b2, "room", true).await.unwrap();
    assert_eq!(snap["states"], json!({"alice":{"name":"Alice"}}));
    drop(on_b2);
    // Alice on B too, writing later: hers wins on both nodes.
    let mut on_a = v2(&base(&a), json!({"mode":"r","sub":"carol"})).await;
    let mut view_a = View::of(&join(&mut on_a, "room", true).await.unwrap());
    until(&mut on_a, &mut view_a, |v| v.named("watcher") == 1).await;
    assert_eq!(view_a.state("alice"), Some(&json!({"name":"Alice"})));
    let mut alice_b = v2(&base(&b), json!({"mode":"r","sub":"alice"})).await;
    join(&mut alice_b, "room", false).await;
    until(&mut on_a, &mut view_a, |v| v.named("alice") == 2).await;
    let set_at = Instant::now();
    set_state(&mut alice_b, "room", json!({"name":"Alice B"})).await;
    let newer = json!({"name":"Alice B"});
    until(&mut on_a, &mut view_a, |v| v.state("alice") == Some(&newer)).await;
    assert!(set_at.elapsed() < quick, "{:?}", set_at.elapsed());
    until(&mut on_b, &mut view_b, |v| v.state("alice") == Some(&newer)).await;
    // Her connection on B leaves: A's state is hers again, on both nodes.
    drop(alice_b);
    let older = json!({"name":"Alice"});
    until(&mut on_a, &mut view_a, |v| {
        v.named("alice") == 1 && v.state("alice") == Some(&older)
    })
    .await;
    until(&mut on_b, &mut view_b, |v| {
        v.named("alice") == 1 && v.state("alice") == Some(&older)
    })
    .await;
    // Her last connection leaves: no state left anywhere.
    drop(alice_a);
    until(&mut on_b, &mut view_b, |v| v.named("alice") == 0).await;
    assert!(view_b.states.is_empty());
    let snap = join(
        &mut v2(&base(&b), json!({"mode":"r","sub":"w3"})).await,
        "room",
        true,
    )
    .await
    .unwrap();
    assert_eq!(snap["states"], json!({}));
    drop((on_a, on_b));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn member_states_across_two_nodes() {
    two_node_states(&[]).await;
}

#[tokio::test]
async fn member_states_across_two_wal_nodes() {
    two_node_states(&["--source", "wal"]).await;
}
