"""The ITLM study's cells (bench/defenses.py): round 0's judge check, ITLM as the paper runs it and our
variants, other victim seeds, and the diagnostics (kept-clean, simulated judges, loss separation, trimming by
class, the judge's training length, the one-run hook, the loss trace)."""

import torch

from poisonlab.attacks import create_attack
from poisonlab.data import ImageSet
from poisonlab.defenses.itlm import ITLM, judge_check, lowest_loss
from poisonlab.defenses.probe import accuracy, per_sample_loss, precision_recall, predict, train_cached
from poisonlab.fileio import write_json
from poisonlab.train import TrainConfig

from defenses_cells import Cells, load_results, log
from defenses_choice import itlm_candidates, pick
from defenses_measures import EpochLoss, LossRecord, LossTrace, mask_of, separation_stats, trimmed_of, tta_loss
from defenses_settings import (ATTACKS, ITLM_CV_KW, ITLM_GRID_KW, ITLM_HOOK_KW, ITLM_KW, JUDGE_EPOCHS, VAL, VICTIM,
                               attack_spec)


class ITLMCells(Cells):
    """The ITLM study's cells on top of the data and the undefended runs."""

    def round0(self, seed=0):
        """ITLM's round 0 alone, read before any retraining: the undefended flip run under this victim seed (the
        checkpoint that none / reseeded / ITLM.fit share) and its judge check against the known flips."""
        data, poisons = self.sets["flip"]
        cfg = TrainConfig(**{**VICTIM, "seed": seed})

        def run():
            r = train_cached(data, self.test, cfg, self.ckpt)
            return {**self.trained(r, "flip"),
                    "judge": judge_check(predict(r["model"], data) != data.labels, ITLM_KW["alpha"], poisons)}
        return self.cell("flip/round0" + (f"-seed{seed}" if seed else ""),
                         {"victim": {**VICTIM, "seed": seed}, "attack": ATTACKS["flip"], "alpha": ITLM_KW["alpha"]}, run)

    def itlm(self, attack, kw=None, name="itlm"):
        """ITLM as the paper runs it: round 0 is the undefended run (cached), then kw["rounds"] retrainings
        from scratch, each on the alpha fraction with the lowest loss under the previous round's model."""
        data, poisons = self.sets[attack]
        kw = kw or (ITLM_KW if attack == "flip" else ITLM_GRID_KW)

        def run():
            out = ITLM(**kw).fit(data, self.test, self.cfg, checkpoints=self.ckpt, log=log, val=self.val,
                                 known_bad=poisons)
            rounds = out["rounds"]
            for r, kept in zip(rounds[1:], out["selections"]):
                r["trimmed"] = precision_recall(trimmed_of(kept, len(data)), poisons)
            return {**self.metrics(out["model"], attack), "val_acc": rounds[-1]["val_acc"], "rounds": rounds,
                    "trimmed": rounds[-1]["trimmed"], "seconds": round(sum(r["train_seconds"] for r in rounds), 1),
                    "warnings": out["warnings"]}
        settings = {"victim": VICTIM, "attack": attack_spec(attack), "itlm": kw, "form": "fit", "val": VAL}
        rec = self.cell(f"{attack}/{name}", settings, run)
        if any("judge" not in q for q in rec["rounds"][:-1]):  # cells from before the judge check: add it from
            out = ITLM(**kw).fit(data, self.test, self.cfg, checkpoints=self.ckpt, known_bad=poisons)  # the cache
            for q, o in zip(rec["rounds"], out["rounds"]):
                q["judge"] = o.get("judge")
            rec["warnings"] = out["warnings"]
            write_json(self.cell_path(f"{attack}/{name}", settings), rec)
        return rec

    def itlm_kept_clean(self, attack="flip"):
        """Diagnostic: the paper form's last kept set with its remaining poisons removed (by the oracle). Splits
        ITLM's gap to the oracle into what the poisons it kept cost and what the clean samples it trimmed cost."""
        data, poisons = self.sets[attack]

        def run():
            out = ITLM(**ITLM_KW).fit(data, self.test, self.cfg, checkpoints=self.ckpt)  # cached rounds
            kept = out["kept"][~torch.isin(out["kept"], poisons)]
            r = train_cached(data.subset(kept), self.test, self.cfg, self.ckpt)
            return {**self.trained(r, attack), "train_size": len(kept), "removed": len(out["kept"]) - len(kept)}
        return self.cell(f"{attack}/itlm-kept-clean", {"victim": VICTIM, "attack": attack_spec(attack),
                                                       "itlm": ITLM_KW}, run)

    def simulated(self, precision: float, attack="flip"):
        """Diagnostic: what trimming would give with a better judge. Trims as many samples as there are poisons:
        the `precision` share of them are the poisons the undefended model gives the highest loss, the rest the
        clean samples it gives the highest loss (so the trimmed clean samples are the hard ones, as with a real
        judge), then retrains from scratch once."""
        data, poisons = self.sets[attack]
        bad = mask_of(poisons, len(data))

        def run():
            loss = per_sample_loss(self.victim(attack)["model"], data)
            k = round(precision * len(poisons))
            top = [idx[torch.argsort(loss[idx], descending=True, stable=True)[:m]]
                   for idx, m in ((poisons, k), (torch.nonzero(~bad).flatten(), len(poisons) - k))]
            kept = trimmed_of(torch.cat(top), len(data))
            r = train_cached(data.subset(kept), self.test, self.cfg, self.ckpt)
            return {**self.trained(r, attack), "train_size": len(kept),
                    "trimmed": precision_recall(torch.cat(top), poisons)}
        return self.cell(f"{attack}/itlm-sim{precision:g}", {"victim": VICTIM, "attack": attack_spec(attack),
                                                             "precision": precision}, run)

    def separation(self, attack="flip"):
        """How well each judge's losses separate the poisons (ROC AUC of the loss, poisons = positives; the
        mean loss of clean and poisoned samples), over all samples and split into the samples the judge trained
        on ("seen") and the others: the paper form's round models, the held-out judges' losses of each
        selection of `itlm-cv2`, and the oracle (trained without any poison). Reads cached models only."""
        data, poisons = self.sets[attack]
        bad = mask_of(poisons, len(data))

        def row(name, loss, seen):
            out = {"judge": name, "all": separation_stats(loss, bad)}
            for key, mask in (("seen", seen), ("unseen", ~seen)):
                if bad[mask].any() and (~bad[mask]).any():
                    out[key] = separation_stats(loss[mask], bad[mask])
            return out

        def run():
            rows, kept = [], torch.arange(len(data))
            itlm = ITLM(**ITLM_KW)
            for r in range(ITLM_KW["rounds"] + 1):
                model = train_cached(data.subset(kept) if r else data, self.test, self.cfg, self.ckpt)["model"]
                loss, seen = per_sample_loss(model, data), mask_of(kept, len(data))
                rows.append(row(f"itlm round {r} model ({len(kept)} samples)", loss, seen))
                kept = itlm.keep(loss, data)
            cv, kept = ITLM(**ITLM_CV_KW[-1]), torch.arange(len(data))
            for r in range(cv.rounds):
                loss, _, _ = cv.held_out_loss(data, kept, self.test, self.cfg, self.ckpt)
                rows.append(row(f"itlm-cv2 held-out judges, selection {r + 1} (from {len(kept)} kept)", loss,
                                torch.zeros(len(data), dtype=torch.bool)))
                kept = cv.keep(loss, data)
            clean = torch.nonzero(~bad).flatten()
            model = train_cached(data.subset(clean), self.test, self.cfg, self.ckpt)["model"]
            rows.append(row("oracle (trained on the clean samples only)", per_sample_loss(model, data), ~bad))
            return {"rows": rows}
        return self.cell(f"{attack}/loss-separation", {"victim": VICTIM, "attack": attack_spec(attack),
                                                       "itlm": ITLM_KW, "cv": ITLM_CV_KW[-1], "v": 2}, run)

    def reseeded(self, seed: int, kw=None, attacks=("clean", "flip", "badnets"), name="itlm"):
        """Another victim seed (initialisation, batch order, augmentation; same poisons) for the flip's ITLM
        result: clean data, the flip undefended (and the other attacks undefended), and ITLM, so the recovery
        has a second draw."""
        cfg, kw = TrainConfig(**{**VICTIM, "seed": seed}), kw or dict(alpha=0.8, rounds=1)
        out = {}
        for attack in attacks:
            def run(attack=attack):
                r = train_cached(self.sets[attack][0], self.test, cfg, self.ckpt)
                return self.trained(r, attack)
            out[attack] = self.cell(f"{attack}/none-seed{seed}", {"victim": {**VICTIM, "seed": seed},
                                                                   "attack": attack_spec(attack)}, run)
        data, poisons = self.sets["flip"]

        def run():
            res = ITLM(**kw).fit(data, self.test, cfg, checkpoints=self.ckpt, log=log, val=self.val, known_bad=poisons)
            t = precision_recall(trimmed_of(res["kept"], len(data)), poisons)
            return {**self.metrics(res["model"], "flip"), "val_acc": res["rounds"][-1]["val_acc"], "trimmed": t,
                    "seconds": round(sum(r["train_seconds"] for r in res["rounds"]), 1),
                    "judges": [q["judge"] for q in res["rounds"][:-1]], "warnings": res["warnings"]}
        out["itlm"] = self.cell(f"flip/{name}-seed{seed}", {"victim": {**VICTIM, "seed": seed},
                                                          "attack": attack_spec("flip"), "itlm": kw}, run)
        return out

    def chosen_itlm(self) -> tuple[str, dict]:
        """The ITLM setting (cell, and the round count) whose model has the best validation accuracy among the
        settings run on the flip so far (no defense excluded; ties as `pick`):
        what a second victim seed reruns. The test set plays no part."""
        self.itlm("flip")
        res = load_results(self.work)
        best = pick([c for c in itlm_candidates(res) if c["name"] != "none"])
        return best["cell"], {**res[f"flip/{best['cell']}"]["settings"]["itlm"], "rounds": best["round"]}

    def trimming(self, attack="flip"):
        """Reads the paper form's cached round models (no training): for each, how well its loss ranks the
        poisons globally and inside every label class (what per_class=True trims), and which clean samples its
        global selection trims, counted by true class (does trimming empty the hard classes?)."""
        data, poisons = self.sets[attack]
        bad = mask_of(poisons, len(data))
        true = self.train.labels

        def run():
            rows, kept, itlm = [], torch.arange(len(data)), ITLM(**ITLM_KW)
            frac = 1 - len(poisons) / len(data)
            for r in range(ITLM_KW["rounds"] + 1):
                model = train_cached(data.subset(kept) if r else data, self.test, self.cfg, self.ckpt)["model"]
                loss = per_sample_loss(model, data)
                row = {"round": r, "train_size": len(kept), **separation_stats(loss, bad)}
                for key, groups in (("global", None), ("per_class", data.labels)):
                    trimmed = trimmed_of(lowest_loss(loss, frac, groups), len(data))
                    row[f"{key}_precision"] = round(precision_recall(trimmed, poisons)["precision"], 1)
                    clean_trimmed = trimmed[~bad[trimmed]]
                    row[f"{key}_clean_trimmed_by_class"] = torch.bincount(true[clean_trimmed], minlength=data.num_classes).tolist()
                row["within_class_auc"] = round(sum(separation_stats(loss[data.labels == c], bad[data.labels == c])["auc"]
                                                    for c in range(data.num_classes)) / data.num_classes, 3)
                rows.append(row)
                kept = itlm.keep(loss, data)
            return {"rows": rows, "clean_by_class": torch.bincount(true[~bad], minlength=data.num_classes).tolist()}
        return self.cell(f"{attack}/trimming", {"victim": VICTIM, "attack": attack_spec(attack), "itlm": ITLM_KW}, run)

    def judges(self, attack="flip"):
        """How a judge's training length changes how well its loss ranks the poisons (is there an early window
        before the flipped labels are fitted?): the undefended victim trained JUDGE_EPOCHS epochs, each with its
        own cosine schedule, ranked by its final loss, by the loss after every epoch, by the loss averaged over
        the whole run, by the training loss of the last 5 epochs and by a 6-view augmented loss; plus the share of
        flipped samples it predicts as their flipped label (fitted) or as their true class."""
        data, poisons = self.sets[attack]
        bad = mask_of(poisons, len(data))
        out = {}
        for epochs in JUDGE_EPOCHS:
            def run(epochs=epochs):
                cfg, rec = TrainConfig(**{**VICTIM, "epochs": epochs}), LossRecord(data, epochs)
                r = train_cached(data, self.test, cfg, self.ckpt, hooks=[rec])
                pred = predict(r["model"], data)
                trace = [separation_stats(rec.eval[e], bad) for e in range(epochs)]
                # the highest final losses, as many as the poisons: what alpha = the clean share trims
                top = mask_of(torch.topk(rec.eval[-1], len(poisons)).indices, len(data))
                wrong = pred != data.labels
                return {"clean_acc": round(r["last_acc"], 2), "val_acc": round(accuracy(r["model"], self.val), 2),
                        "train_acc": round(r["history"][-1]["train_acc"], 2), "seconds": round(r["train_seconds"], 1),
                        "flipped_fitted": round(100.0 * (pred[bad] == data.labels[bad]).float().mean().item(), 1),
                        "flipped_true": round(100.0 * (pred[bad] == self.train.labels[bad]).float().mean().item(), 1),
                        "clean_error": round(100.0 * wrong[~bad].float().mean().item(), 1),
                        "trimmed_clean_wrong": round(100.0 * wrong[top & ~bad].float().mean().item(), 1),
                        "final": trace[-1],
                        "per_epoch": [{"auc": q["auc"], "precision": q["precision"]} for q in trace],
                        "mean_all_epochs": separation_stats(rec.eval.mean(0), bad),
                        "train_loss_last5": separation_stats(rec.train[-5:].mean(0), bad),
                        "tta": separation_stats(tta_loss(r["model"], data), bad)}
            out[epochs] = self.cell(f"{attack}/judge-{epochs}", {"victim": {**VICTIM, "epochs": epochs},
                                                                  "attack": attack_spec(attack), "v": 2}, run)
        return out

    def itlm_hook(self, attack):
        """ITLM's one-run approximation: re-selections inside one training run, no re-initialisation."""
        data, poisons = self.sets[attack]

        def run():
            hook = ITLM(**ITLM_HOOK_KW).hook(data)
            r = train_cached(data, self.test, self.cfg, self.ckpt, hooks=[hook])
            return {**self.metrics(r["model"], attack), "seconds": round(r["train_seconds"], 1),
                    "trimmed": precision_recall(trimmed_of(hook.kept, len(data)), poisons),
                    "selections": hook.selections}
        return self.cell(f"{attack}/itlm-hook", {"victim": VICTIM, "attack": attack_spec(attack),
                                                 "itlm": ITLM_HOOK_KW}, run)

    def trace(self, attack="flip"):
        """How well low loss separates the poisons along one undefended run: after every epoch, the share of
        poisons among the |poisons| samples with the highest loss, over the whole set and per label class
        (what ITLM would trim with alpha = the clean fraction, selecting with that epoch's model)."""
        data, poisons = self.sets[attack]

        def run():
            hook = LossTrace(data, poisons)
            r = train_cached(data, self.test, self.cfg, self.ckpt, hooks=[hook])
            return {"clean_acc": round(r["last_acc"], 2), "seconds": round(r["train_seconds"], 1),
                    "epochs": [{**row, "test_acc": h["test_acc"], "train_acc": round(h["train_acc"], 2)}
                               for row, h in zip(hook.rows, r["history"])]}
        return self.cell(f"{attack}/loss-trace", {"victim": VICTIM, "attack": attack_spec(attack)}, run)

    def checkpoint_selection(self, attack="flip", schedules=("cosine", "multistep"), noise_seed=1):
        """The official ITLM code's judge: each round's epoch with the best accuracy on a validation split that
        carries the same label noise. The paper form's first retraining (the alpha fraction round 0 keeps) is
        trained under each schedule with EpochLoss: after every epoch the noisy and clean validation accuracy and
        the precision of the |poisons| highest losses over the whole set (what the next selection trims) and the mean
        loss of the flips it trains on and of the clean images."""
        data, poisons = self.sets[attack]
        bad = mask_of(poisons, len(data))
        name, kw = ATTACKS[attack]
        noisy = create_attack(name, **{**kw, "seed": noise_seed})(self.val)  # the same noise, another draw
        noisy_val = ImageSet(noisy.images, noisy.labels, list(self.val.classes))

        def run():
            r0 = train_cached(data, self.test, self.cfg, self.ckpt)["model"]
            kept = ITLM(alpha=ITLM_KW["alpha"]).keep(per_sample_loss(r0, data), data)
            kept_bad = bad & mask_of(kept, len(data))  # the flips the retraining trains on
            out = {"retrained_on": len(kept), "flips_kept": int(kept_bad.sum())}
            for schedule in schedules:
                cfg = TrainConfig(**{**VICTIM, "schedule": schedule})
                rec = EpochLoss(data, cfg.epochs, [noisy_val, self.val])
                r = train_cached(data.subset(kept), self.test, cfg, self.ckpt, hooks=[rec])
                top = [torch.topk(loss, len(poisons)).indices for loss in rec.losses]
                rows = [{"epoch": e + 1, "noisy_val": round(float(rec.val[e, 0]), 2),
                         "clean_val": round(float(rec.val[e, 1]), 2),
                         "precision": round(100 * bad[t].float().mean().item(), 1),
                         "kept_flips_loss": round(rec.losses[e][kept_bad].mean().item(), 3),
                         "clean_loss": round(rec.losses[e][~bad].mean().item(), 3)} for e, t in enumerate(top)]
                out[schedule] = {"test_acc": round(r["last_acc"], 2), "rows": rows}
            return out
        return self.cell(f"{attack}/checkpoint-selection", {"victim": VICTIM, "attack": attack_spec(attack),
                                                            "alpha": ITLM_KW["alpha"], "schedules": list(schedules),
                                                            "noise_seed": noise_seed}, run)
