//! Objects of a `Manager` live while a proxy to them exists in some process: a dropped
//! proxy, a closed connection and a dead client let theirs go; a proxy on its way to a child
//! keeps its object; a name keeps it for good. From CPython's `_TestZZZNumberOfObjects` and
//! `test_dict_proxy_nested`'s lifetime rules.

#[macro_use]
mod support;

use std::time::Duration;

use support::{TestResult, join_ok};
use tokio_multiprocessing::{
    self as mp, DictProxy, Error, EventProxy, ListProxy, Manager, Process,
};

fn main() {
    mp::init();
    support::run(trials![
        objects_end_with_their_last_proxy,
        a_proxy_lent_to_a_child_outlives_the_parents,
        a_client_that_dies_lets_its_references_go,
        a_proxy_a_child_drops_unused_lets_its_object_go,
        nested_proxies_stay_proxies,
        a_name_is_given_once_and_only_to_this_managers_objects,
        a_proxy_sent_in_a_large_value_ends_with_its_last_proxy,
        a_proxy_whose_send_is_refused_lends_nothing,
        a_value_with_more_proxies_than_a_message_has_descriptors_reaches_a_child,
        proxies_sent_in_a_vec_end_with_their_last_proxy,
        proxies_a_child_receives_share_one_connection,
        an_object_received_several_times_ends_with_its_last_proxy,
    ])
}

/// Waits (up to 20 s) until the server holds `n` objects.
async fn count_becomes(m: &Manager, n: usize) -> TestResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = m.object_count().await?;
        if now == n {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{now} objects, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn objects_end_with_their_last_proxy() -> TestResult {
    // _TestZZZNumberOfObjects.test_number_of_objects
    let m = Manager::start().await?;
    ensure!(m.object_count().await? == 0, "a new manager holds nothing");
    let d = m.dict::<u8, u8>().await?;
    let l = m.list([1u8]).await?;
    ensure!(m.object_count().await? == 2, "two objects");
    let d2 = d.clone();
    drop(d);
    // The release travels on the same connection as the count, ahead of it.
    ensure!(m.object_count().await? == 2, "a clone keeps the dict");
    d2.insert(1, 1).await?;
    drop(d2);
    ensure!(
        m.object_count().await? == 1,
        "the dict ended with its last proxy"
    );
    let named = m.queue::<u8>().await?;
    m.register("kept", &named).await?;
    drop(named);
    drop(l);
    ensure!(m.object_count().await? == 1, "a name keeps its object");
    Ok(())
}

async fn a_name_is_given_once_and_only_to_this_managers_objects() -> TestResult {
    // Each manager's first dict: the same kind of object, made first in each server.
    let (a, b) = (Manager::start().await?, Manager::start().await?);
    let (ours, theirs) = (a.dict::<u8, u8>().await?, b.dict::<u8, u8>().await?);
    ours.insert(1, 1).await?;
    let r = a.register("foreign", &theirs).await;
    ensure!(matches!(r, Err(Error::Manager(_))), "registered: {r:?}");
    a.register("ours", &ours).await?;
    // A name is given once: naming it again is no change, naming another object fails.
    a.register("ours", &ours).await?;
    let other = a.dict::<u8, u8>().await?;
    match a.register("ours", &other).await {
        Err(Error::Manager(m)) => ensure!(m.contains("\"ours\" already names"), "{m}"),
        r => return Err(format!("a taken name given again: {r:?}").into()),
    }
    let fetched: DictProxy<u8, u8> = a.get("ours").await?;
    ensure!(
        fetched.get(&1).await? == Some(1),
        "the name fetched another object"
    );
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

async fn fill_when_told(d: DictProxy<String, u32>, go: EventProxy) -> mp::Result<()> {
    go.wait().await?;
    d.insert("pid".into(), std::process::id()).await?;
    if d.get(&"pid".into()).await? != Some(std::process::id()) {
        return Err(mp::Error::Manager("the dict lost its item".into()));
    }
    Ok(())
}

async fn a_proxy_lent_to_a_child_outlives_the_parents() -> TestResult {
    let m = Manager::start().await?;
    let go = m.event().await?;
    // The parent's only proxy to the dict goes with the arguments.
    let mut p = Process::new(fill_when_told, (m.dict::<String, u32>().await?, go.clone()))
        .start()
        .await?;
    ensure!(
        m.object_count().await? == 2,
        "the dict was let go while on its way to the child"
    );
    go.set().await?;
    join_ok(&mut p).await?;
    count_becomes(&m, 1).await
}

async fn ignore(_d: DictProxy<String, u32>) {}

fn ignore_plainly(_d: DictProxy<String, u32>) {}

async fn a_proxy_a_child_drops_unused_lets_its_object_go() -> TestResult {
    // A proxy passed to a child that drops it without a call (an async target and a plain
    // one): the loan that kept the object on its way is settled, and the object ends with
    // the parent's last proxy. (The child never connected, so its loan stood, and the
    // object stayed until the manager stopped.)
    let m = Manager::start().await?;
    let d = m.dict::<String, u32>().await?;
    let mut p = Process::new(ignore, (d.clone(),)).start().await?;
    join_ok(&mut p).await?;
    let mut p = Process::new(ignore_plainly, (d.clone(),)).start().await?;
    join_ok(&mut p).await?;
    drop(d);
    count_becomes(&m, 0).await
}

async fn hold_until_killed(d: DictProxy<String, u32>, held: EventProxy) -> mp::Result<()> {
    d.insert("here".into(), 1).await?;
    held.set().await?;
    std::future::pending::<()>().await;
    Ok(())
}

async fn a_client_that_dies_lets_its_references_go() -> TestResult {
    let m = Manager::start().await?;
    let held = m.event().await?;
    let mut p = Process::new(
        hold_until_killed,
        (m.dict::<String, u32>().await?, held.clone()),
    )
    .start()
    .await?;
    ensure!(
        held.wait_timeout(Duration::from_secs(20)).await?,
        "the child never used its dict"
    );
    ensure!(m.object_count().await? == 2, "the child's dict lives");
    p.kill()?;
    p.join().await?;
    count_becomes(&m, 1).await
}

async fn note_length(d: DictProxy<String, u32>, big: serde_bytes::ByteBuf) -> mp::Result<()> {
    d.insert("len".into(), big.len() as u32).await?;
    Ok(())
}

/// A proxy sent beside a large value (over 1 MiB encoded, which is measured before it is
/// encoded) to a child and through a pipe: its object ends with the last proxy once each
/// copy is let go. (The code before lent the object once for each pass of the encoding,
/// and the extra loans kept it until the manager stopped.)
async fn a_proxy_sent_in_a_large_value_ends_with_its_last_proxy() -> TestResult {
    let m = Manager::start().await?;
    let big = || serde_bytes::ByteBuf::from(vec![1u8; 2 << 20]);
    let d = m.dict::<String, u32>().await?;
    let mut p = Process::new(note_length, (d.clone(), big()))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(
        d.get(&"len".into()).await? == Some(2 << 20),
        "the child's length"
    );
    drop(d);
    count_becomes(&m, 0).await?;

    let d = m.dict::<String, u32>().await?;
    let (tx, rx) = mp::Pipe::<(DictProxy<String, u32>, serde_bytes::ByteBuf)>::new()?;
    let sent = {
        let d = d.clone();
        tokio::spawn(async move { tx.send(&(d, big())).await })
    };
    let (received, _) = rx.recv().await?;
    sent.await??;
    received.insert("through".into(), 1).await?;
    ensure!(
        d.get(&"through".into()).await? == Some(1),
        "the received proxy's write"
    );
    drop((d, received));
    count_becomes(&m, 0).await?;
    m.shutdown().await?;
    Ok(())
}

/// A value that fails to encode.
#[derive(serde::Deserialize)]
struct Refuses;

impl serde::Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refuses"))
    }
}

/// Sends of a proxy that fail before anything goes out: over TCP, which carries no
/// descriptors (a local manager's proxy holds one), beside a value that fails to encode, and
/// 253 of them on a queue, more descriptors than its item holds.
/// The object ends with its last proxy. (The code before lent it for each, and the loans
/// kept it until the manager stopped.)
async fn a_proxy_whose_send_is_refused_lends_nothing() -> TestResult {
    let m = Manager::start().await?;
    let d = m.dict::<String, u32>().await?;
    let listener = mp::Listener::bind("127.0.0.1:0".parse::<std::net::SocketAddr>()?, None)?;
    let tcp =
        mp::Client::connect::<DictProxy<String, u32>>(listener.address().clone(), None).await?;
    let _accepted = listener.accept::<DictProxy<String, u32>>().await?;
    let r = tcp.send(&d).await;
    ensure!(
        matches!(r, Err(Error::InvalidArgument(_))),
        "over TCP: {r:?}"
    );
    let (tx, _rx) = mp::Pipe::<(DictProxy<String, u32>, Refuses)>::new()?;
    let r = tx.send(&(d.clone(), Refuses)).await;
    ensure!(
        matches!(r, Err(Error::Encode { .. })),
        "beside a refusal: {r:?}"
    );
    // A queue item of as many descriptors as a message carries, one more than an item
    // may hold (the queue's own packet takes one): the proxy's socket and 252 files.
    let files = (0..252)
        .map(|_| {
            Ok(mp::Fd::from(std::os::fd::OwnedFd::from(
                std::fs::File::open("/dev/null")?,
            )))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let q = mp::Queue::<(DictProxy<String, u32>, Vec<mp::Fd>)>::new()?;
    let r = q
        .put((d.clone(), files))
        .await
        .map_err(|e| e.into_parts().0);
    ensure!(
        matches!(r, Err(Error::InvalidArgument(_))),
        "253 on a queue: {r:?}"
    );
    drop(d);
    count_becomes(&m, 0).await?;
    m.shutdown().await?;
    Ok(())
}

type Nested = DictProxy<String, DictProxy<String, u32>>;

async fn mutate_nested(outer: Nested, log: ListProxy<ListProxy<u32>>) -> mp::Result<()> {
    let inner = outer
        .get(&"k".into())
        .await?
        .ok_or_else(|| mp::Error::Manager("no inner dict".into()))?;
    inner.insert("pid".into(), std::process::id()).await?;
    if let Some(l) = log.get(0).await? {
        l.append(std::process::id()).await?;
    }
    Ok(())
}

async fn nested_proxies_stay_proxies() -> TestResult {
    // test_dict_proxy_nested, test_list_proxy_in_list
    let m = Manager::start().await?;
    let outer: Nested = m.dict().await?;
    let inner = m.dict::<String, u32>().await?;
    outer.insert("k".into(), inner).await?;
    let log = m.list(Vec::<ListProxy<u32>>::new()).await?;
    log.append(m.list(Vec::<u32>::new()).await?).await?;
    ensure!(
        m.object_count().await? == 4,
        "stored proxies keep their objects"
    );
    let mut p = Process::new(mutate_nested, (outer.clone(), log.clone()))
        .start()
        .await?;
    join_ok(&mut p).await?;
    let inner = outer
        .get(&"k".into())
        .await?
        .ok_or("the inner dict is gone")?;
    ensure!(
        inner.get(&"pid".into()).await? == Some(p.pid()),
        "a change through the nested proxy is seen here"
    );
    let l = log.get(0).await?.ok_or("the inner list is gone")?;
    ensure!(l.to_vec().await? == [p.pid()], "the list in the list");
    let other = Manager::start().await?;
    let foreign = other.dict::<String, u32>().await?;
    let r = outer.insert("foreign".into(), foreign).await;
    ensure!(
        matches!(r, Err(Error::Encode { .. })),
        "a proxy of another manager: {r:?}"
    );
    Ok(())
}

/// Writes its index into each dict, through a proxy it received among many.
async fn write_each(dicts: Vec<DictProxy<u32, u32>>) -> mp::Result<()> {
    for (i, d) in dicts.iter().enumerate() {
        d.insert(0, i as u32).await?;
    }
    Ok(())
}

/// A manager, and `n` dicts of it.
async fn manager_with_dicts(n: usize) -> mp::Result<(Manager, Vec<DictProxy<u32, u32>>)> {
    let m = Manager::start().await?;
    let mut dicts = Vec::with_capacity(n);
    for _ in 0..n {
        dicts.push(m.dict::<u32, u32>().await?);
    }
    Ok((m, dicts))
}

/// A child given more proxies of a manager in one value than one message carries
/// descriptors (253): the way to the server travels once for all of them, and the child
/// uses each. (The value could not be sent:
/// "one message may carry at most 253 descriptors", as each proxy sent a descriptor of its
/// own, where Python sends a list of proxies of any length.)
async fn a_value_with_more_proxies_than_a_message_has_descriptors_reaches_a_child() -> TestResult {
    let (_m, dicts) = manager_with_dicts(300).await?;
    let mut p = Process::new(write_each, (dicts.clone(),)).start().await?;
    join_ok(&mut p).await?;
    for (i, d) in dicts.iter().enumerate() {
        ensure!(d.get(&0).await? == Some(i as u32), "dict {i}");
    }
    Ok(())
}

/// Proxies sent to a child in a `Vec` end with the parent's last proxy. (The first of
/// them stayed until the manager stopped: the encoder tries a sequence's first item as a
/// byte before it writes it, and the proxy lent its object at that try too, a loan that no
/// receiver settled.)
async fn proxies_sent_in_a_vec_end_with_their_last_proxy() -> TestResult {
    let m = Manager::start().await?;
    let mut dicts = Vec::new();
    for _ in 0..3 {
        dicts.push(m.dict::<u32, u32>().await?);
    }
    let mut p = Process::new(write_each, (dicts.clone(),)).start().await?;
    join_ok(&mut p).await?;
    ensure!(dicts[2].get(&0).await? == Some(2), "the child wrote");
    drop(dicts);
    count_becomes(&m, 0).await
}

/// Lowers this process's limit of open descriptors to `n` (soft and hard).
fn limit_fds(n: u64) -> mp::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_NOFILE, n, n).map_err(|e| mp::Error::from(std::io::Error::from(e)))
}

/// At a limit of 1,024 descriptors, writes its index into each dict, then counts this
/// process's open descriptors.
async fn write_each_then_count_fds(dicts: Vec<DictProxy<u32, u32>>) -> mp::Result<usize> {
    limit_fds(1024)?;
    write_each(dicts).await?;
    Ok(support::open_fds())
}

/// A child given 600 proxies of one manager, at a descriptor limit of 1,024 (most systems'
/// default), uses each through one connection, as CPython's proxies share theirs. (Each
/// received proxy made a connection of its own, two descriptors: the child failed with
/// "Too many open files".)
async fn proxies_a_child_receives_share_one_connection() -> TestResult {
    const N: usize = 600;
    let (_m, dicts) = manager_with_dicts(N).await?;
    let mut p = Process::call(write_each_then_count_fds, (dicts.clone(),))
        .start()
        .await?;
    let fds = p.join().await??;
    ensure!(
        fds < 64,
        "the child holds {fds} descriptors for {N} proxies"
    );
    for (i, d) in dicts.iter().enumerate() {
        ensure!(d.get(&0).await? == Some(i as u32), "dict {i}");
    }
    Ok(())
}

/// Uses the first proxy of `first`, then takes three more of the same object from `more`,
/// received while its connection holds the object already, and uses them.
async fn use_then_receive_more(
    first: Vec<DictProxy<String, u32>>,
    more: mp::Queue<Vec<DictProxy<String, u32>>>,
) -> mp::Result<()> {
    first[0].insert("first".into(), first.len() as u32).await?;
    let more = more.get().await?;
    for d in &more {
        d.insert("more".into(), more.len() as u32).await?;
    }
    Ok(())
}

async fn ignore_all(_d: Vec<DictProxy<String, u32>>) {}

/// One object received several times by a child, in one value and in a later one, used
/// or not: every loan is settled, so the object ends with the parent's last proxy, and
/// the child's calls reach it meanwhile.
async fn an_object_received_several_times_ends_with_its_last_proxy() -> TestResult {
    let m = Manager::start().await?;
    let d = m.dict::<String, u32>().await?;
    let more = mp::Queue::new()?;
    more.put(vec![d.clone(), d.clone(), d.clone()]).await?;
    let mut p = Process::new(use_then_receive_more, (vec![d.clone(), d.clone()], more))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(d.get(&"first".into()).await? == Some(2), "the first calls");
    ensure!(d.get(&"more".into()).await? == Some(3), "the later calls");
    let mut p = Process::new(ignore_all, (vec![d.clone(), d.clone(), d.clone()],))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(m.object_count().await? == 1, "the dict ended early");
    drop(d);
    count_becomes(&m, 0).await
}
