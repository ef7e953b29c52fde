//! Two labs built at the same time in one process do not collide: distinct namespaces, both
//! fully working (each has its own 198.18.0.0/24), both cleaned up.

use std::time::Duration;

use flannel_lab::{Lab, netns_exists, ping};

fn build_and_check() -> anyhow::Result<Vec<String>> {
    let lab = Lab::builder().nodes(2).build()?;
    let names = lab.netns_names();
    anyhow::ensure!(
        ping(
            lab.node(0).netns(),
            lab.node(1).ip().into(),
            2,
            Duration::from_secs(3)
        )?,
        "n1 cannot reach n2 in lab {names:?}"
    );
    anyhow::ensure!(
        ping(
            lab.node(1).netns(),
            lab.node(0).ip().into(),
            2,
            Duration::from_secs(3)
        )?,
        "n2 cannot reach n1 in lab {names:?}"
    );
    Ok(names)
}

#[test]
fn labs_built_in_parallel_threads_do_not_collide() -> anyhow::Result<()> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                build_and_check()
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        let names = h
            .join()
            .map_err(|_| anyhow::anyhow!("lab thread panicked"))??;
        all.push(names);
    }
    let (a, b) = (&all[0], &all[1]);
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3);
    for n in a {
        assert!(!b.contains(n), "both labs used namespace {n}");
    }
    for n in a.iter().chain(b) {
        assert!(!netns_exists(n), "{n} survived");
    }
    Ok(())
}
