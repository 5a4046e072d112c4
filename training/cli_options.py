"""What `training.cli`'s commands share: the dataset options, parsed once into a
`DataOptions`, the other repeated options, and `fail`, the exit for a user's mistake.

A command that reads a dataset declares one parameter, `data: DataOptions = DataOptions()`,
and is decorated with `@data_options()`: the decorator shows typer the seven dataset
options in that parameter's place and hands the command their values as one
`DataOptions`. Option names, help and defaults are written once, here, and the defaults
come from the config dataclasses they fill, so the CLI cannot drift from the library.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar, get_type_hints

import typer

from training.data import DEFAULT_CACHE_DIR, PreprocessConfig, SyntheticConfig, load_dataset
from training.data.preprocess import ProcessedDataset
from training.data.readers import ML_100K
from training.data.schema import DataFormatError

_PREPROCESS = PreprocessConfig()
_SYNTHETIC = SyntheticConfig()

DeviceOpt = Annotated[str, typer.Option(help="auto (cuda if available), cpu, cuda, cuda:1 ...")]
LossOpt = Annotated[
    str,
    typer.Option(
        help="next-item softmax: full, sampled (in-batch + shared negatives, logQ), or auto "
        "(sampled from 20,000 items on)"
    ),
]
NegativesOpt = Annotated[int, typer.Option(help="shared negatives per step of the sampled loss")]
VariantOpt = Annotated[
    str,
    typer.Option(
        help="flexcode (what ships), or an ablation: full, fix, sid-only, cf-only, no-align, "
        "dense-only, full-L2, full-L4, full-L5"
    ),
]


def fail(message: str) -> NoReturn:
    """Stop the command: `error: MESSAGE` in red on stderr, exit status 2. For problems
    the user fixes (bad data, options or paths), which a traceback would only bury."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@dataclass(frozen=True)
class DataOptions:
    """The dataset a command reads and how it is filtered and split. Each field is one
    command-line option (its Annotated typer.Option), its default the library's."""

    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "-d",
            help="ml-100k, synthetic, or a path to RecBole atomic files / Amazon JSON lines",
        ),
    ] = ML_100K
    k_core: Annotated[int, typer.Option(help="k-core filter on users and items")] = (
        _PREPROCESS.k_core
    )
    cold_fraction: Annotated[
        float, typer.Option(help="fraction of newest items held out of training (cold-start eval)")
    ] = _PREPROCESS.cold_item_fraction
    synthetic_items: Annotated[int, typer.Option(help="synthetic: catalog size")] = (
        _SYNTHETIC.n_items
    )
    synthetic_interactions: Annotated[
        int, typer.Option(help="synthetic: number of interactions")
    ] = _SYNTHETIC.n_interactions
    synthetic_seed: Annotated[int, typer.Option(help="synthetic: generator seed")] = _SYNTHETIC.seed
    cache_dir: Annotated[Path, typer.Option(help="processed-data cache directory")] = (
        DEFAULT_CACHE_DIR
    )

    def load(self) -> ProcessedDataset:
        """The processed dataset (from the cache when it holds it); a data problem ends
        the command through `fail`."""
        try:
            return load_dataset(
                self.dataset,
                PreprocessConfig(k_core=self.k_core, cold_item_fraction=self.cold_fraction),
                SyntheticConfig(
                    n_items=self.synthetic_items,
                    n_interactions=self.synthetic_interactions,
                    seed=self.synthetic_seed,
                ),
                self.cache_dir,
            )
        except (DataFormatError, ValueError, RuntimeError, FileNotFoundError) as error:
            fail(str(error))


Command = TypeVar("Command", bound=Callable[..., object])
DATA_PARAMETER = "data"  # the parameter `data_options` expands


def data_options(*names: str) -> Callable[[Command], Command]:
    """Decorator (under `@app.command()`): replace the command's `data: DataOptions`
    parameter with the dataset options, all of them or only `names` (the others keep
    their defaults), and call the command with their values gathered in a `DataOptions`.

    The options take the parameter's place, so `--help` and `ctx.params` list them where
    the command declares `data`.
    """
    hints = get_type_hints(DataOptions, include_extras=True)
    chosen = [f for f in fields(DataOptions) if not names or f.name in names]
    unknown = set(names) - {f.name for f in chosen}
    if unknown:
        raise ValueError(f"no dataset option(s) {sorted(unknown)}")

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        parameters = list(signature.parameters.values())
        names_in_order = [p.name for p in parameters]
        if DATA_PARAMETER not in names_in_order:
            raise TypeError(f"{command.__name__} has no `{DATA_PARAMETER}: DataOptions` parameter")
        at = names_in_order.index(DATA_PARAMETER)
        kind = parameters[at].kind
        options = [
            inspect.Parameter(f.name, kind, default=f.default, annotation=hints[f.name])
            for f in chosen
        ]
        parameters[at : at + 1] = options

        @functools.wraps(command)
        def with_data(*args: object, **kwargs: object) -> object:
            data = DataOptions(**{f.name: kwargs.pop(f.name) for f in chosen})
            return command(*args, **kwargs, **{DATA_PARAMETER: data})

        # typer reads the parameters from __signature__ and, for types, __annotations__:
        # both must describe the options, not the `data` parameter they replace.
        with_data.__signature__ = signature.replace(parameters=parameters)
        with_data.__annotations__ = {
            p.name: p.annotation for p in parameters if p.annotation is not p.empty
        }
        return with_data  # type: ignore[return-value]

    return decorate
