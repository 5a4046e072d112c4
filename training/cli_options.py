"""What `training.cli`'s commands share: the dataset options, parsed once into a
`DataOptions`, the other repeated options, `Settings` (a `--config` recipe file under the
flags given on the command line) and `fail`, the exit for a user's mistake.

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
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar, get_type_hints

import typer

from training.data import (
    DEFAULT_CACHE_DIR,
    EventColumns,
    PreprocessConfig,
    SyntheticConfig,
    load_dataset,
)
from training.data.preprocess import ProcessedDataset
from training.data.readers import ML_100K
from training.data.schema import DataFormatError

_PREPROCESS = PreprocessConfig()
_SYNTHETIC = SyntheticConfig()
_EVENTS = EventColumns()

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


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="a TOML recipe (e.g. recipes/ml-100k.toml) with dataset options and stage "
        "settings; flags given on the command line win over it",
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
            help="ml-100k, synthetic, or a path to RecBole atomic files / Amazon JSON lines / "
            "a Parquet or CSV event log",
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
    # Parquet/CSV event logs (training/data/readers/events.py): which column holds what.
    item_table: Annotated[
        Path | None, typer.Option(help="event logs: a Parquet/CSV item table (item text)")
    ] = None
    user_column: Annotated[str, typer.Option(help="event logs: the user id column")] = _EVENTS.user
    item_column: Annotated[
        str, typer.Option(help="event logs: the item id column (events and item table)")
    ] = _EVENTS.item
    time_column: Annotated[
        str, typer.Option(help="event logs: seconds, ISO-8601 dates or a timestamp column")
    ] = _EVENTS.timestamp
    text_columns: Annotated[
        str, typer.Option(help="event logs: comma-separated item text columns, joined in order")
    ] = ",".join(_EVENTS.text)
    category_column: Annotated[
        str | None, typer.Option(help="event logs: the item category column")
    ] = _EVENTS.category

    def event_columns(self) -> EventColumns:
        """The column mapping of a Parquet/CSV event log."""
        return EventColumns(
            user=self.user_column,
            item=self.item_column,
            timestamp=self.time_column,
            text=tuple(c.strip() for c in self.text_columns.split(",") if c.strip()),
            category=self.category_column or None,
        )

    def synthetic_config(self) -> SyntheticConfig | None:
        """The synthetic world's settings when the dataset is synthetic, else None."""
        if self.dataset.strip().lower() != "synthetic":
            return None
        return SyntheticConfig(
            n_items=self.synthetic_items,
            n_interactions=self.synthetic_interactions,
            seed=self.synthetic_seed,
        )

    def load(self) -> ProcessedDataset:
        """The processed dataset (from the cache when it holds it); a data problem ends
        the command through `fail`."""
        try:
            return load_dataset(
                self.dataset,
                PreprocessConfig(k_core=self.k_core, cold_item_fraction=self.cold_fraction),
                self.synthetic_config(),
                self.cache_dir,
                self.event_columns(),
                self.item_table,
            )
        except (DataFormatError, ValueError, RuntimeError, FileNotFoundError) as error:
            fail(str(error))


Command = TypeVar("Command", bound=Callable[..., object])
C = TypeVar("C")
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


# --- recipes ------------------------------------------------------------------------------

UNSET: Any = object()  # `Settings.flag` of an option left at its default


def recipe_schema() -> dict:
    """Recipe section -> `training.recipe.Section`. Imported here, not at module level:
    the stage configs pull in torch, which `flexcode --help` should not wait for."""
    from models.sasrec import SASRecConfig
    from training.recipe import Section
    from training.stages.generator import GeneratorTrainConfig
    from training.stages.sasrec import SASRecTrainConfig
    from training.stages.tokenizer import TokenizerSpec, TokenizerTrainConfig

    return {
        "data": Section(DataOptions),
        "sasrec": Section(SASRecConfig, fixed={"n_items": 1}),
        "sasrec_train": Section(SASRecTrainConfig),
        "tokenizer": Section(TokenizerSpec),
        "tokenizer_train": Section(TokenizerTrainConfig),
        "generator_train": Section(GeneratorTrainConfig),
    }


class CommandSettings:
    """A command's settings: config defaults, then the `--config` recipe, then the flags
    given on the command line (a flag left at its default does not override the file).

    `ctx` is the command's typer.Context; `config` the --config path or None."""

    def __init__(self, ctx: typer.Context, config: Path | None) -> None:
        from training.recipe import Recipe, read_recipe

        self.ctx = ctx
        try:
            self.recipe = Recipe() if config is None else read_recipe(config, recipe_schema())
        except ValueError as error:
            fail(str(error))

    def given(self, option: str) -> bool:
        """Whether `option` (a parameter name) was set on the command line or by its
        environment variable, rather than left at its default."""
        source = self.ctx.get_parameter_source(option)
        # By name: typer >= 0.20 ships its own copy of click, with its own enum.
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

    def flag(self, option: str, convert: Callable[[Any], Any] | None = None) -> Any:
        """The option's value when given (through `convert`, e.g. 0 -> None), else UNSET."""
        if not self.given(option):
            return UNSET
        value = self.ctx.params[option]
        return convert(value) if convert else value

    def data(self, data: DataOptions) -> DataOptions:
        """`data` with the recipe's [data] values in place of options left at default."""
        from_file = {k: v for k, v in self.recipe.values("data").items() if not self.given(k)}
        return replace(data, **from_file)

    def build(self, config: type[C], section: str, **values: Any) -> C:
        """`config` from the recipe's `section`, overridden by `values` that are not
        UNSET (flags, or what the run sets itself such as n_items)."""
        chosen = self.recipe.values(section) | {k: v for k, v in values.items() if v is not UNSET}
        try:
            return config(**chosen)
        except ValueError as error:
            where = f"recipe {self.recipe.path} + " if self.recipe.path else ""
            fail(f"{where}command-line settings: {error}")
