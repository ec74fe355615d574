"""The defenses bench (bench/defenses.py): the ITLM study's cells plus ABL, the oracle (retraining without every
poison), detection (spectral signatures, activation clustering), corrective unlearning and DPA."""

import time

import torch

from poisonlab.defenses.abl import ABL
from poisonlab.defenses.detect import ActivationClustering, SpectralSignatures
from poisonlab.defenses.dpa import DPA, aggregate
from poisonlab.defenses.itlm import lowest_loss
from poisonlab.defenses.probe import accuracy, per_sample_loss, precision_recall
from poisonlab.defenses.unlearn import SSD, GradientAscent, RetrainWithout, timed
from poisonlab.train import TrainConfig

import defenses_settings as settings
from defenses_cells import log
from defenses_itlm import ITLMCells
from defenses_measures import trimmed_of
from defenses_settings import ABL_KW, DPA_VICTIM, FOUND, UNLEARN, VICTIM, attack_spec


class Bench(ITLMCells):
    """Every cell of the bench: the ITLM study's and the other defenses'."""

    def abl(self, attack, seed=0):
        data, poisons = self.sets[attack]
        cfg = TrainConfig(**{**VICTIM, "seed": seed}) if seed else self.cfg

        def run():
            curve = []
            res = ABL(**ABL_KW).run(data, self.test, cfg, self.ckpt,
                                    on_epoch=lambda e, m: curve.append({"epoch": e, **self.metrics(m, attack)}))
            trained, unlearn_s = res["trained"], res["unlearn_seconds"]
            return {**self.metrics(res["model"], attack), "before_unlearning": self.metrics(trained["model"], attack),
                    "unlearning_curve": curve, "isolation": precision_recall(res["isolated"], poisons),
                    "seconds": round(trained["train_seconds"] + unlearn_s, 1), "unlearn_seconds": round(unlearn_s, 1)}
        victim = {**VICTIM, "seed": seed} if seed else VICTIM  # seed 0 keeps the key it had
        return self.cell(f"{attack}/abl" + (f"-seed{seed}" if seed else ""),
                         {"victim": victim, "attack": attack_spec(attack), "abl": ABL_KW}, run)
    def oracle(self, attack):
        """Reference: retrain without every poison, what a perfect detector plus retraining would give (the
        ceiling of any defense that removes samples)."""
        data, poisons = self.sets[attack]

        def run():
            fn = RetrainWithout(self.cfg, test=self.test, folder=self.ckpt)
            model = fn(None, data, poisons)
            # The poisons are unseen data to this model: how well would a judge that never fitted them trim?
            judge = trimmed_of(lowest_loss(per_sample_loss(model, data), 1 - len(poisons) / len(data)), len(data))
            return {**self.metrics(model, attack), "removed": len(poisons),
                    "seconds": round(fn.result["train_seconds"], 1), "judge": precision_recall(judge, poisons)}
        return self.cell(f"{attack}/oracle", {"victim": VICTIM, "attack": attack_spec(attack)}, run)
    def detect(self, attack):
        data, poisons = self.sets[attack]
        out = {}
        for name, det in (("spectral", SpectralSignatures(eps=0.1)), ("ac", ActivationClustering())):
            def run(det=det):
                model = self.victim(attack)["model"]
                t0 = time.perf_counter()
                found = det(model, data)
                secs = round(time.perf_counter() - t0, 1)
                for row in found.per_class:  # what each class's smaller cluster would catch, flagged or not
                    if row["class"] in found.candidates:
                        row["small_cluster"] = precision_recall(found.candidates[row["class"]], poisons)
                return {**precision_recall(found.flagged, poisons), "seconds": secs, "per_class": found.per_class}
            out[name] = self.cell(f"{attack}/detect-{name}", {"victim": VICTIM, "attack": attack_spec(attack),
                                                             "detector": repr(vars(det)), "v": 2}, run)
        return out

    def unlearn(self, attack="badnets", retrain_all=True):
        """retrain_all=False skips the costly retraining reference for the largest found fraction."""
        data, poisons = self.sets[attack]
        out = {}
        for frac in FOUND:
            g = torch.Generator().manual_seed(1)
            found = poisons[torch.randperm(len(poisons), generator=g)[:max(1, round(frac * len(poisons)))]].sort().values
            for method, kw in UNLEARN.items():
                if method == "retrain" and frac == max(FOUND) and not retrain_all:
                    continue
                def run(method=method, kw=kw, found=found):
                    model, curve = self.victim(attack)["model"], []
                    if method == "retrain":
                        fn = RetrainWithout(self.cfg, test=self.test, folder=self.ckpt)
                        new = fn(model, data, found)
                        secs = fn.result["train_seconds"]
                    elif method == "negrad+":
                        trace = lambda e, m: curve.append({"epoch": e, **self.metrics(m, attack)})  # noqa: E731
                        new, secs = timed(lambda m, d, f: GradientAscent(**kw)(m, d, f, on_epoch=trace), model, data, found)
                    else:
                        new, secs = timed(SSD(**kw), model, data, found)
                    return {**self.metrics(new, attack), "seconds": round(secs, 1), "found": len(found), "curve": curve}
                out[(frac, method)] = self.cell(f"{attack}/unlearn-{method}-found{frac:g}",
                                                {"victim": VICTIM, "attack": attack_spec(attack), "found": frac,
                                                 "method": method, "kw": kw}, run)
        return out

    def dpa(self, attack):
        data, _ = self.sets[attack]

        def run():
            dpa, cfg = DPA(settings.DPA_K), TrainConfig(**DPA_VICTIM)
            models = dpa.fit(data, cfg, cache=self.work / "dpa", log=log)
            t0 = time.perf_counter()
            res = dpa.certify(models, self.test)
            rec = {"clean_acc": round(res["accuracy"], 2), "k": settings.DPA_K, "curve": res["curve"],
                   "part_sizes": [len(p) for p in dpa.partitions(data)],
                   "base_acc": [round(accuracy(m, self.test), 2) for m in models]}
            probe = self.probes.get(attack)
            if probe is not None:
                pred, _ = aggregate(dpa.votes(models, probe))
                rec["asr"] = round(100.0 * (pred == probe.labels).float().mean().item(), 2)
            rec["seconds"] = round(sum(dpa.train_seconds) + time.perf_counter() - t0, 1)
            return rec
        return self.cell(f"{attack}/dpa", {"victim": DPA_VICTIM, "attack": attack_spec(attack), "k": settings.DPA_K}, run)
