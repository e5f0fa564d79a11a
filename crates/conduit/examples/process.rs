//! Python's first `multiprocessing` example, in Rust:
//!
//! ```python
//! from multiprocessing import Process, Pipe
//!
//! def worker(n, conn):
//!     for word in iter(conn.recv, None):
//!         print("child got", word)
//!
//! if __name__ == "__main__":
//!     parent_conn, child_conn = Pipe()
//!     p = Process(target=worker, args=(7, child_conn))
//!     p.start()
//!     for word in ["hello", "from", "the", "parent"]:
//!         parent_conn.send(word)
//!     parent_conn.send(None)
//!     p.join()
//! ```
//!
//! Unlike Python's, the Rust worker returns a value that `join` hands back.
//! Run it with `cargo run -p conduit --example process`.

use conduit::Receiver;

/// Runs in the child: reads words until the parent closes the channel.
fn worker((n, conn): (u32, Receiver<String>)) -> u64 {
    let mut total = 0;
    for word in conn.iter() {
        match word {
            Ok(word) => {
                println!("child {}: got {word:?}", std::process::id());
                total += word.len() as u64;
            }
            Err(e) => {
                eprintln!("child: {e}");
                break;
            }
        }
    }
    u64::from(n) * total
}

fn main() -> Result<(), conduit::Error> {
    conduit::init(); // in the child, runs `worker` here and exits
    let (tx, rx) = conduit::channel::<String>()?;
    let mut p = conduit::Process::spawn(worker, (7u32, rx))?;
    println!("parent {}: started child {}", std::process::id(), p.pid());
    for word in ["hello", "from", "the", "parent"] {
        tx.send(&word.to_string())?;
    }
    drop(tx); // the child's iter() ends
    let out = p.join()?;
    println!("parent: the child returned {out}");
    assert_eq!(out, 7 * 18);
    Ok(())
}
