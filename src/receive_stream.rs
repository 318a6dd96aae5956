//! A receiving end as a [`futures::Stream`] of what it receives: the `into_stream` of
//! [`Queue`](crate::Queue), [`Connection`](crate::Connection) and the manager's
//! [`QueueProxy`](crate::QueueProxy), tokio-stream's `ReceiverStream` for ends that cross
//! processes.

use std::future::Future;

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::{Error, Result};

/// What a receive's error does to the stream of receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// The end has nothing more to give, and says so the way it does: the stream ends.
    End,
    /// One item is lost (it was taken, and could not be decoded): the error takes its place,
    /// and the stream goes on.
    GoOn,
    /// The end is of no further use: the error is the stream's last item.
    Last,
}

fn then(e: &Error) -> Then {
    match e {
        // The other end closed (Python's `EOFError`), the queue shut down and empty, or
        // this handle closed.
        Error::Closed | Error::ShutDown | Error::HandleClosed { .. } => Then::End,
        Error::Decode { .. } => Then::GoOn,
        _ => Then::Last,
    }
}

/// The results of `receive(end)`, one after the other: each item received, and each error
/// of a single item in its place; the stream ends when the end has nothing more to give
/// ([`Error::Closed`], [`Error::ShutDown`], [`Error::HandleClosed`]), or after any other
/// error, which would only repeat.
///
/// `receive` takes the end and gives it back with what it received, so that the stream
/// owns its end and is `'static`.
pub(crate) fn receives<E, T, F, Fut>(end: E, receive: F) -> BoxStream<'static, Result<T>>
where
    E: Send + 'static,
    T: Send + 'static,
    F: FnMut(E) -> Fut + Send + 'static,
    Fut: Future<Output = (E, Result<T>)> + Send + 'static,
{
    futures::stream::unfold((Some(end), receive), |(end, mut receive)| async move {
        let (end, received) = receive(end?).await;
        match received {
            Ok(item) => Some((Ok(item), (Some(end), receive))),
            Err(e) => match then(&e) {
                Then::End => None,
                Then::GoOn => Some((Err(e), (Some(end), receive))),
                Then::Last => Some((Err(e), (None, receive))),
            },
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_error_of_one_item_lets_the_stream_go_on() {
        assert_eq!(then(&Error::Closed), Then::End);
        assert_eq!(then(&Error::ShutDown), Then::End);
        let decode = Error::Decode {
            type_name: "u8",
            message: "not a u8".into(),
        };
        assert_eq!(then(&decode), Then::GoOn);
        assert_eq!(then(&Error::Protocol("torn".into())), Then::Last);
    }

    #[tokio::test]
    async fn a_stream_yields_what_its_end_gives_until_it_ends() {
        let given = [
            Ok(1),
            Err(Error::Decode {
                type_name: "u8",
                message: "x".into(),
            }),
            Ok(2),
            Err(Error::Protocol("torn".into())),
            Ok(3),
        ];
        let s = receives(0usize, move |i| {
            let r = given[i].clone();
            async move { (i + 1, r) }
        });
        let got: Vec<_> = s.collect().await;
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(
            matches!(got[0], Ok(1)) && matches!(got[2], Ok(2)),
            "{got:?}"
        );
        assert!(matches!(got[3], Err(Error::Protocol(_))), "{got:?}");
        let ends = receives(
            0usize,
            |i| async move { (i, Err::<u8, _>(Error::ShutDown)) },
        );
        assert_eq!(ends.count().await, 0);
    }
}
