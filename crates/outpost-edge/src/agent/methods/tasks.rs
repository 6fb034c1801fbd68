//! The table of background tasks (uploads) that `GetTaskStatus` reads: a plain struct, bounded by
//! construction. It holds at most [`MAX_TASKS`]; a new task makes room by forgetting the oldest finished one,
//! and is refused while every tracked task is still running.

use std::collections::VecDeque;

use super::wire::{TaskState, TaskStatus};

/// How many tasks are tracked at once.
pub const MAX_TASKS: usize = 10;

/// Every tracked task is still running: a new one is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{MAX_TASKS} uploads are under way; try again when one has finished")]
pub struct TasksBusy;

/// The tracked tasks, oldest first.
#[derive(Debug, Default)]
pub struct TaskTable {
    tasks: VecDeque<TaskStatus>,
}

impl TaskTable {
    /// Tracks a new task as `NotStarted`, forgetting the oldest finished one when the table is full.
    pub fn admit(&mut self, correlation_id: String) -> Result<TaskStatus, TasksBusy> {
        if self.tasks.len() >= MAX_TASKS {
            let finished = self
                .tasks
                .iter()
                .position(|t| matches!(t.status, TaskState::Completed | TaskState::Failed))
                .ok_or(TasksBusy)?;
            self.tasks.remove(finished);
        }
        let status = TaskStatus {
            status: TaskState::NotStarted,
            message: String::new(),
            correlation_id,
        };
        self.tasks.push_back(status.clone());
        Ok(status)
    }

    /// Records a task's new state (a forgotten task stays forgotten).
    pub fn set(&mut self, correlation_id: &str, status: TaskState, message: String) {
        if let Some(task) = self
            .tasks
            .iter_mut()
            .find(|t| t.correlation_id == correlation_id)
        {
            task.status = status;
            task.message = message;
        }
    }

    /// A task's state: `Unknown` for an id never given or forgotten.
    pub fn status(&self, correlation_id: &str) -> TaskStatus {
        self.tasks
            .iter()
            .find(|t| t.correlation_id == correlation_id)
            .cloned()
            .unwrap_or_else(|| TaskStatus {
                status: TaskState::Unknown,
                message: "no task has this correlation id (or it finished long ago)".into(),
                correlation_id: correlation_id.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_goes_from_not_started_to_completed() {
        let mut table = TaskTable::default();
        assert_eq!(
            table.admit("a".into()).unwrap().status,
            TaskState::NotStarted
        );
        table.set("a", TaskState::Running, String::new());
        assert_eq!(table.status("a").status, TaskState::Running);
        table.set("a", TaskState::Completed, String::new());
        assert_eq!(table.status("a").status, TaskState::Completed);
        assert_eq!(table.status("b").status, TaskState::Unknown);
    }

    #[test]
    fn a_full_table_forgets_the_oldest_finished_task() {
        let mut table = TaskTable::default();
        for i in 0..MAX_TASKS {
            table.admit(i.to_string()).unwrap();
        }
        table.set("3", TaskState::Failed, "no".into());
        table.set("5", TaskState::Completed, String::new());
        table.admit("new".into()).unwrap();
        assert_eq!(table.status("3").status, TaskState::Unknown);
        assert_eq!(table.status("5").status, TaskState::Completed);
        assert_eq!(table.status("new").status, TaskState::NotStarted);
    }

    #[test]
    fn a_table_of_running_tasks_refuses_one_more() {
        let mut table = TaskTable::default();
        for i in 0..MAX_TASKS {
            table.admit(i.to_string()).unwrap();
        }
        assert_eq!(table.admit("one too many".into()), Err(TasksBusy));
        assert_eq!(table.status("0").status, TaskState::NotStarted);
    }
}
