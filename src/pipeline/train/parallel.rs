//! Data parallelism: copies of the student and the frozen models on other devices, and a
//! step's records shared among the devices with their gradients summed on the first in
//! record order (so the step is the one-device step).

use t2v_kernels::Tensor;

use super::record::{RecordDraws, RecordGrads, RecordValues, Recipe};
use super::{Item, RewardModels, Student};
use crate::models::weights::{Result, WeightsError};

/// A copy of the student and the frozen models on another device
/// ([`Trainer::add_replicas`](super::Trainer::add_replicas)).
pub struct Replica {
    pub student: Student,
    pub models: RewardModels,
}

/// Runs a step's records on the student's device and the replicas' (record k on device
/// k mod n, one thread per replica) and hands their gradients to `add` on device 0 in
/// record order. A replica's gradients come through host memory, at most one record's
/// waiting per replica.
pub(super) fn data_parallel(recipe: &Recipe, main: (&Student, &RewardModels), replicas: &[Replica], jobs: &[(Item, RecordDraws)], add: &mut dyn FnMut(RecordGrads) -> Result<()>) -> Result<()> {
    let n = replicas.len() + 1;
    let b = jobs.len();
    let gpu = main.0.unet_gpu();
    let shapes: Vec<Vec<usize>> = main.0.trainable().iter().map(|t| t.shape().to_vec()).collect();
    type Sent = Result<(Vec<Vec<f32>>, RecordValues)>;
    std::thread::scope(|s| -> Result<()> {
        let mut inboxes = Vec::new();
        for (r, replica) in replicas.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Sent>(1);
            inboxes.push(rx);
            s.spawn(move || {
                for (item, draws) in jobs.iter().skip(r + 1).step_by(n) {
                    let sent = recipe.record(&replica.student, &replica.models, *item, draws, b).and_then(|g| {
                        let host = Tensor::read_many(&g.grads.iter().collect::<Vec<_>>())?;
                        Ok((host, g.values))
                    });
                    let failed = sent.is_err();
                    if failed {
                        let name = replica.student.unet_gpu().adapter_info().name.clone();
                        eprintln!("training device {} ({name}) failed on record {} of {}:", r + 1, item.1, recipe.shards[item.0].path.display());
                    }
                    // a closed inbox: device 0 stopped the step
                    if tx.send(sent).is_err() || failed {
                        break;
                    }
                }
            });
        }
        for (k, (item, draws)) in jobs.iter().enumerate() {
            let g = match k % n {
                0 => recipe.record(main.0, main.1, *item, draws, b)?,
                r => {
                    let (host, values) = inboxes[r - 1].recv().map_err(|_| WeightsError::Data { path: format!("training device {r}"), msg: "its thread stopped".into() })??;
                    let grads = host.iter().zip(&shapes).map(|(h, s)| Tensor::from_slice(&gpu, s, h)).collect::<t2v_kernels::Result<Vec<_>>>()?;
                    RecordGrads { grads, values }
                }
            };
            add(g)?;
        }
        Ok(())
    })
}

