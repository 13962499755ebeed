//! The pending `pg_dist_node` changes, one at most per group, and the order they are applied in
//! (docs/compatibility.md, *Citus*): while a group's REST transaction is in flight only that group's task is
//! taken; otherwise the coordinator's own group 0 first; otherwise the oldest.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{ManagerError, NodeTarget};
use crate::event::EventType;

/// Where a task came from.
#[derive(Debug)]
pub(crate) enum Origin {
    /// The coordinator leader's HA cycle: the DCS says this group's primary is `target`.
    Heartbeat,
    /// A worker's `POST /citus`.
    Rest {
        kind: EventType,
        timeout: Duration,
        reply: Option<oneshot::Sender<Result<(), ManagerError>>>,
    },
}

#[derive(Debug)]
pub(crate) struct Task {
    pub target: NodeTarget,
    pub cooldown_ms: i32,
    pub origin: Origin,
}

impl Task {
    pub fn is_rest(&self) -> bool {
        matches!(self.origin, Origin::Rest { .. })
    }

    /// Answer the REST caller, if any (a caller that stopped waiting is not an error).
    pub fn reply(&mut self, result: Result<(), ManagerError>) {
        if let Origin::Rest { reply, .. } = &mut self.origin {
            if let Some(tx) = reply.take() {
                let _ = tx.send(result);
            }
        }
    }
}

/// What became of a pushed task.
#[derive(Debug)]
pub(crate) enum Pushed {
    Queued,
    /// Queued, replacing this older task of the same group.
    Replaced(Task),
    /// Not queued: a heartbeat never replaces a queued REST task.
    Dropped(Task),
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    tasks: VecDeque<Task>,
}

impl Queue {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Queue a task. A newer task replaces the group's queued one (keeping its place in line),
    /// except that a heartbeat never replaces a REST task.
    pub fn push(&mut self, task: Task) -> Pushed {
        let Some(slot) = self
            .tasks
            .iter_mut()
            .find(|t| t.target.group == task.target.group)
        else {
            self.tasks.push_back(task);
            return Pushed::Queued;
        };
        if slot.is_rest() && !task.is_rest() {
            return Pushed::Dropped(task);
        }
        Pushed::Replaced(std::mem::replace(slot, task))
    }

    /// Whether `take` would return a task.
    pub fn has_pickable(&self, in_flight: Option<u32>) -> bool {
        match in_flight {
            Some(group) => self
                .tasks
                .iter()
                .any(|t| t.target.group == group && t.is_rest()),
            None => !self.tasks.is_empty(),
        }
    }

    /// The next task to apply. Heartbeat tasks of the in-flight group are ignored (removed) and
    /// heartbeat tasks equal to the cache are discarded on the way; both are returned in
    /// `discarded` so nothing is lost silently.
    pub fn take(
        &mut self,
        in_flight: Option<u32>,
        matches_cache: impl Fn(&Task) -> bool,
        discarded: &mut Vec<Task>,
    ) -> Option<Task> {
        let mut kept = VecDeque::with_capacity(self.tasks.len());
        for task in self.tasks.drain(..) {
            let ignored_in_flight = !task.is_rest() && in_flight == Some(task.target.group);
            if ignored_in_flight || (!task.is_rest() && matches_cache(&task)) {
                discarded.push(task);
            } else {
                kept.push_back(task);
            }
        }
        self.tasks = kept;
        let index = match in_flight {
            Some(group) => self.tasks.iter().position(|t| t.target.group == group),
            None => self
                .tasks
                .iter()
                .position(|t| t.target.group == 0)
                .or(if self.tasks.is_empty() { None } else { Some(0) }),
        }?;
        self.tasks.remove(index)
    }

    /// Empty the queue (stop, lost connection): the caller answers the REST tasks.
    pub fn drain(&mut self) -> Vec<Task> {
        self.tasks.drain(..).collect()
    }

    /// Remove the heartbeat tasks, keeping REST ones (they are answered, never dropped silently).
    pub fn drain_heartbeats(&mut self) -> Vec<Task> {
        let (rest, heartbeats): (VecDeque<Task>, VecDeque<Task>) =
            self.tasks.drain(..).partition(|t| t.is_rest());
        self.tasks = rest;
        heartbeats.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(group: u32, host: &str) -> NodeTarget {
        NodeTarget {
            group,
            host: host.into(),
            port: 5432,
        }
    }

    fn heartbeat(group: u32, host: &str) -> Task {
        Task {
            target: target(group, host),
            cooldown_ms: 10_000,
            origin: Origin::Heartbeat,
        }
    }

    fn rest(group: u32, host: &str, kind: EventType) -> Task {
        Task {
            target: target(group, host),
            cooldown_ms: 10_000,
            origin: Origin::Rest {
                kind,
                timeout: Duration::from_secs(30),
                reply: None,
            },
        }
    }

    /// (group, host) of what `take` returns until the queue is empty.
    fn order(queue: &mut Queue, in_flight: Option<u32>, cached: &[(u32, &str)]) -> Vec<String> {
        let mut out = Vec::new();
        let mut discarded = Vec::new();
        while let Some(t) = queue.take(
            in_flight,
            |t| cached.contains(&(t.target.group, t.target.host.as_str())),
            &mut discarded,
        ) {
            out.push(format!("{}:{}", t.target.group, t.target.host));
        }
        out
    }

    #[test]
    fn pick_order_table() {
        struct Case {
            name: &'static str,
            tasks: Vec<Task>,
            in_flight: Option<u32>,
            cached: Vec<(u32, &'static str)>,
            expected: Vec<&'static str>,
            left: usize,
        }
        let cases = vec![
            Case {
                name: "fifo without group 0",
                tasks: vec![heartbeat(2, "b"), heartbeat(1, "a"), heartbeat(3, "c")],
                in_flight: None,
                cached: vec![],
                expected: vec!["2:b", "1:a", "3:c"],
                left: 0,
            },
            Case {
                name: "group 0 first",
                tasks: vec![heartbeat(2, "b"), heartbeat(0, "coord"), heartbeat(1, "a")],
                in_flight: None,
                cached: vec![],
                expected: vec!["0:coord", "2:b", "1:a"],
                left: 0,
            },
            Case {
                name: "in flight: only that group's REST task, the rest waits",
                tasks: vec![
                    heartbeat(0, "coord"),
                    rest(2, "b", EventType::BeforeDemote),
                    rest(1, "a2", EventType::AfterPromote),
                ],
                in_flight: Some(1),
                cached: vec![],
                expected: vec!["1:a2"],
                left: 2,
            },
            Case {
                name: "in flight: the group's heartbeat is ignored",
                tasks: vec![heartbeat(1, "a"), heartbeat(2, "b")],
                in_flight: Some(1),
                cached: vec![],
                expected: vec![],
                left: 1,
            },
            Case {
                name: "heartbeats equal to the cache are discarded, REST tasks never",
                tasks: vec![
                    heartbeat(1, "a"),
                    rest(2, "b", EventType::AfterPromote),
                    heartbeat(3, "c"),
                ],
                in_flight: None,
                cached: vec![(1, "a"), (2, "b")],
                expected: vec!["2:b", "3:c"],
                left: 0,
            },
        ];
        for case in cases {
            let mut queue = Queue::default();
            for t in case.tasks {
                assert!(matches!(queue.push(t), Pushed::Queued), "{}", case.name);
            }
            let got = order(&mut queue, case.in_flight, &case.cached);
            assert_eq!(got, case.expected, "{}", case.name);
            assert_eq!(queue.len(), case.left, "{}: left in the queue", case.name);
            assert!(
                !queue.has_pickable(case.in_flight),
                "{}: nothing pickable after draining",
                case.name
            );
        }
    }

    #[test]
    fn replacement_rules() {
        let mut queue = Queue::default();
        queue.push(heartbeat(1, "a"));
        queue.push(heartbeat(2, "b"));
        // A newer heartbeat replaces the older one in place.
        assert!(
            matches!(queue.push(heartbeat(1, "a2")), Pushed::Replaced(t) if t.target.host == "a")
        );
        // A REST task replaces a heartbeat.
        assert!(matches!(
            queue.push(rest(2, "b2", EventType::BeforeDemote)),
            Pushed::Replaced(t) if !t.is_rest()
        ));
        // A heartbeat never replaces a REST task.
        assert!(
            matches!(queue.push(heartbeat(2, "b3")), Pushed::Dropped(t) if t.target.host == "b3")
        );
        // A newer REST task replaces the older REST task.
        assert!(matches!(
            queue.push(rest(2, "b4", EventType::BeforePromote)),
            Pushed::Replaced(t) if t.is_rest() && t.target.host == "b2"
        ));
        assert_eq!(order(&mut queue, None, &[]), vec!["1:a2", "2:b4"]);
    }

    #[test]
    fn pickable_and_drains() {
        let mut queue = Queue::default();
        assert!(!queue.has_pickable(None));
        queue.push(heartbeat(1, "a"));
        assert!(queue.has_pickable(None));
        assert!(
            !queue.has_pickable(Some(1)),
            "a heartbeat of the in-flight group"
        );
        queue.push(rest(3, "c", EventType::AfterPromote));
        assert!(!queue.has_pickable(Some(1)));
        assert!(queue.has_pickable(Some(3)));
        let heartbeats = queue.drain_heartbeats();
        assert_eq!(heartbeats.len(), 1);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.drain().len(), 1);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn reply_reaches_the_caller_once() {
        let (tx, mut rx) = oneshot::channel();
        let mut task = rest(1, "a", EventType::AfterPromote);
        if let Origin::Rest { reply, .. } = &mut task.origin {
            *reply = Some(tx);
        }
        task.reply(Err(ManagerError::Stopped));
        task.reply(Ok(()));
        assert_eq!(rx.try_recv(), Ok(Err(ManagerError::Stopped)));
    }
}
